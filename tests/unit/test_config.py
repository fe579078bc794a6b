from datetime import timedelta
from pathlib import Path

import pytest

from worker.config import ConfigError, load_config


def load(tmp_path: Path, **env: str):
    return load_config(env, cwd=tmp_path)


def test_defaults_match_the_contract(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.source_url is None
    assert config.backup_dir == tmp_path / "data" / "backups"
    assert config.schedule == "0 2 * * *" and config.cleanup_schedule == "0 * * * *"
    assert config.timezone.key == "UTC"
    assert (config.keeping.retention_days, config.keep_min, config.compression_level) == (7, 3, 3)
    assert not config.keeping.tiers and config.keeping.safety_days == 7
    assert config.s3 is None and config.cleanup_rules == ()
    assert config.freshness_limit == timedelta(hours=26)
    assert config.catalog_url == f"sqlite:///{tmp_path / 'data' / 'backups' / 'catalog.db'}"
    assert (config.log_level, config.log_format) == ("info", "json")


def test_database_url_is_the_default_source_and_railway_volume_the_default_directory(tmp_path: Path) -> None:
    config = load(tmp_path, DATABASE_URL="sqlite:////app/data/app.db", RAILWAY_VOLUME_MOUNT_PATH="/app/data")
    assert config.source_url == "sqlite:////app/data/app.db"
    assert config.backup_dir == Path("/app/data/backups")


def test_backup_source_wins_over_database_url(tmp_path: Path) -> None:
    config = load(tmp_path, DATABASE_URL="sqlite:///a.db", BACKUP_SOURCE="sqlite:///b.db")
    assert config.source_url == "sqlite:///b.db"


def test_timezone_falls_back_to_tz(tmp_path: Path) -> None:
    assert load(tmp_path, TZ="Europe/Berlin").timezone.key == "Europe/Berlin"
    assert load(tmp_path, TZ="Europe/Berlin", BACKUP_TIMEZONE="Asia/Tokyo").timezone.key == "Asia/Tokyo"


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("BACKUP_SOURCE", "mysql://db/app", "not mysql://"),
        ("BACKUP_SOURCE", "sqlite://host/app.db", "host part"),
        ("BACKUP_SCHEDULE", "every night", "5"),
        ("BACKUP_SCHEDULE", "0 2 * * 8", "day of week"),
        ("BACKUP_TIMEZONE", "Moon/Base", "not a known time zone"),
        ("BACKUP_RETENTION_DAYS", "seven", "not a whole number"),
        ("BACKUP_KEEP_MIN", "0", "out of range"),
        ("BACKUP_COMPRESSION_LEVEL", "20", "out of range"),
        ("FRESHNESS_LIMIT", "26", "not a duration"),
        ("LOG_LEVEL", "loud", "not one of"),
        ("LOG_FORMAT", "xml", "not one of"),
        ("CATALOG_URL", "not a url", "not a SQLAlchemy URL"),
        ("S3_RETENTION_DAYS", "30", "S3_BUCKET is not"),
        ("S3_KEEP_MONTHLY", "12", "S3_BUCKET is not"),
        ("BACKUP_KEEP_HOURLY", "-1", "out of range"),
        ("BACKUP_KEEP_DAILY", "seven", "not a whole number"),
        ("BACKUP_KEEP_WEEKLY", "4.5", "not a whole number"),
        ("BACKUP_KEEP_MONTHLY", "1e3", "not a whole number"),
        ("BACKUP_KEEP_YEARLY", "100001", "out of range"),
        ("CLEANUP_RULES", "/tmp/audio/*.mp3", "CLEANUP_RULES"),
    ],
)
def test_each_bad_value_is_named_with_how_to_fix_it(tmp_path: Path, name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **{name: value})
    assert len(caught.value.problems) == 1
    assert name in caught.value.problems[0] and fragment in caught.value.problems[0]


def test_s3_endpoint_must_be_a_url_with_a_host(tmp_path: Path) -> None:
    for endpoint in ("http://", "minio:9000", "ftp://host"):
        with pytest.raises(ConfigError, match="S3_ENDPOINT_URL"):
            load(tmp_path, S3_BUCKET="b", S3_ENDPOINT_URL=endpoint)
    with pytest.raises(ConfigError, match="S3_REGION='bad region!' is not a region name"):
        load(tmp_path, S3_BUCKET="b", S3_REGION="bad region!")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_SCHEDULE="x", BACKUP_KEEP_MIN="-1", LOG_LEVEL="loud", FRESHNESS_LIMIT="soon")
    assert len(caught.value.problems) == 4


def test_no_secret_appears_in_problems_or_in_the_printed_configuration(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_SOURCE="postgresql://app:hunter2@db/app", S3_BUCKET="b", S3_ENDPOINT_URL="ftp://k:pw9@x")
    assert "hunter2" not in str(caught.value.problems) and "pw9" not in str(caught.value.problems)
    config = load(tmp_path, BACKUP_SOURCE="sqlite:///app.db", CATALOG_URL="postgresql://c:catpw@db/cat", S3_BUCKET="b",
                  AWS_SECRET_ACCESS_KEY="wJalrXUtnFEMIsecret", AWS_ACCESS_KEY_ID="AKIAEXAMPLEKEYID")
    printed = str(config.describe())
    assert "catpw" not in printed and "wJalrXUtnFEMIsecret" not in printed
    assert "catpw" in config.secrets() and "wJalrXUtnFEMIsecret" in config.secrets()
    assert "AKIAEXAMPLEKEYID" not in printed and "wJalrXUtnFEMIsecret" not in repr(config)


def test_cleanup_rules_that_would_sweep_the_backup_directory_or_the_database_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CLEANUP_RULES"):
        load(tmp_path, BACKUP_DIR=str(tmp_path / "data" / "backups"), CLEANUP_RULES=f"{tmp_path}/data/**=1d")
    with pytest.raises(ConfigError, match="CLEANUP_RULES"):
        load(tmp_path, BACKUP_SOURCE=f"sqlite:///{tmp_path}/db/app.db", CLEANUP_RULES=f"{tmp_path}/db/*.db=1d")
    with pytest.raises(ConfigError, match="CLEANUP_RULES"):
        load(tmp_path, CLEANUP_RULES="/**=1d")
    assert len(load(tmp_path, CLEANUP_RULES="/tmp/audio/*.mp3=24h;/tmp/app/tmp/**=6h").cleanup_rules) == 2


@pytest.mark.parametrize("value, allowed", [("", False), ("false", False), ("true", True), ("TRUE", True), (" False ", False)])
def test_backup_allow_empty_is_true_or_false_and_off_by_default(tmp_path: Path, value: str, allowed: bool) -> None:
    config = load(tmp_path, BACKUP_ALLOW_EMPTY=value)
    assert config.allow_empty is allowed
    assert config.describe()["BACKUP_ALLOW_EMPTY"] is allowed
    assert load(tmp_path).allow_empty is False


@pytest.mark.parametrize("value", ["yes", "1", "on", "maybe"])
def test_backup_allow_empty_refuses_anything_but_true_or_false_naming_the_variable(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, BACKUP_ALLOW_EMPTY=value)
    assert any("BACKUP_ALLOW_EMPTY" in problem and "true or false" in problem for problem in raised.value.problems)


def test_botocore_s_endpoint_variables_name_an_s3_compatible_endpoint_after_s3_endpoint_url(tmp_path: Path) -> None:
    both = {"AWS_ENDPOINT_URL_S3": "http://seaweed:8333", "AWS_ENDPOINT_URL": "http://ceph:7480"}
    assert load(tmp_path, S3_BUCKET="b", **both).s3.endpoint_url == "http://seaweed:8333"
    assert load(tmp_path, S3_BUCKET="b", AWS_ENDPOINT_URL="http://ceph:7480").s3.endpoint_url == "http://ceph:7480"
    assert load(tmp_path, S3_BUCKET="b", S3_ENDPOINT_URL="http://minio:9000", **both).s3.endpoint_url == "http://minio:9000"
    ignored = load(tmp_path, S3_BUCKET="b", AWS_IGNORE_CONFIGURED_ENDPOINT_URLS="true", **both)
    assert ignored.s3.endpoint_url is None  # as botocore itself would ignore them
    assert load(tmp_path, S3_BUCKET="b").s3.endpoint_url is None
    assert load(tmp_path, AWS_ENDPOINT_URL="http://ceph:7480").s3 is None  # other AWS tools may use it: not an error
    secret = load(tmp_path, S3_BUCKET="b", AWS_ENDPOINT_URL_S3="https://k:pw9@seaweed:8333")
    assert "pw9" in secret.secrets() and "pw9" not in str(secret.describe())


@pytest.mark.parametrize("variable", ["S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_an_endpoint_with_a_path_is_refused_naming_the_path_and_where_the_bucket_goes(tmp_path: Path, variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, S3_BUCKET="b", **{variable: "http://host:8333/bucket"})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{variable}='http://host:8333/bucket' has the path '/bucket'")
    assert "put the bucket name in S3_BUCKET" in problem
    for fine in ("http://host:8333", "http://host:8333/", "https://s3.eu-central-003.backblazeb2.com"):
        assert load(tmp_path, S3_BUCKET="b", **{variable: fine}).s3.endpoint_url == fine


@pytest.mark.parametrize("env, local, bucket", [
    # nothing set: a 7-day window on the volume, the bucket keeps everything
    ({}, (7, "", 7), None),
    # a tier without a window: the window is off (only the tiers and BACKUP_KEEP_MIN keep), safety backups 7 days
    ({"BACKUP_KEEP_DAILY": "7", "BACKUP_KEEP_MONTHLY": "12"}, (0, "daily 7, monthly 12", 7), None),
    # a tier and a window: both keep; safety backups stay the window's days
    ({"BACKUP_KEEP_HOURLY": "24", "BACKUP_RETENTION_DAYS": "2"}, (2, "hourly 24", 2), None),
    # a tier at 0 is no tier: the default window stays
    ({"BACKUP_KEEP_DAILY": "0"}, (7, "", 7), None),
    # the window off explicitly: safety backups go too, but the newest one (0 days)
    ({"BACKUP_RETENTION_DAYS": "0"}, (0, "", 0), None),
    # the bucket on its own: tiers without S3_RETENTION_DAYS turn its window off
    ({"S3_BUCKET": "b", "S3_KEEP_WEEKLY": "8", "S3_KEEP_YEARLY": "3"}, (7, "", 7), (0, "weekly 8, yearly 3", 7)),
    ({"S3_BUCKET": "b", "S3_RETENTION_DAYS": "30"}, (7, "", 7), (30, "", 30)),
    ({"S3_BUCKET": "b", "S3_RETENTION_DAYS": "0"}, (7, "", 7), (0, "", 0)),
    ({"S3_BUCKET": "b"}, (7, "", 7), (None, "", 7)),
])
def test_what_each_side_keeps(tmp_path: Path, env, local, bucket) -> None:
    config = load(tmp_path, **env)
    def side(keeping):
        return keeping.retention_days, keeping.tiers.describe(), keeping.safety_days
    assert side(config.keeping) == local
    assert (side(config.s3.keeping) if config.s3 else None) == bucket


def test_config_shows_the_tiers(tmp_path: Path) -> None:
    shown = load(tmp_path, BACKUP_KEEP_DAILY="7", S3_BUCKET="b", S3_KEEP_MONTHLY="12").describe()
    assert shown["BACKUP_KEEP_DAILY"] == 7 and shown["BACKUP_KEEP_HOURLY"] is None
    assert shown["BACKUP_RETENTION_DAYS"] == 0 and shown["S3_KEEP_MONTHLY"] == 12 and shown["S3_RETENTION_DAYS"] == 0
