"""Unit tests for the pure parts of cleanup: reading CLEANUP_RULES and refusing dangerous rules."""

from datetime import timedelta
from pathlib import Path

import pytest

from jobs.cleanup import CleanupRule, dangerous_rule_reason, parse_rules
from jobs.engines.sqlite import SqliteSource

APP = Path("/app")
BACKUPS = Path("/app/data/backups")
HOME = Path("/root")
DATABASE = Path("/app/data/app.db")
PROTECTED = [BACKUPS, APP, HOME]


def rule(text: str, cwd: Path = APP) -> CleanupRule:
    [parsed] = parse_rules(text, cwd)
    return parsed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("/tmp/rose_audio/*.mp3=24h", [("/tmp/rose_audio/*.mp3", "/tmp/rose_audio", timedelta(hours=24), False)]),
        ("/tmp/rose_audio/*.mp3=24h;/app/data/tmp/**=6h",
         [("/tmp/rose_audio/*.mp3", "/tmp/rose_audio", timedelta(hours=24), False),
          ("/app/data/tmp/**", "/app/data/tmp", timedelta(hours=6), True)]),
        # newlines (also CRLF), blank entries and spaces around the '=' are all fine
        ("\n  /tmp/a/*.wav = 90m \r\n;;\n/tmp/b/*.ogg=2d\n",
         [("/tmp/a/*.wav", "/tmp/a", timedelta(minutes=90), False),
          ("/tmp/b/*.ogg", "/tmp/b", timedelta(days=2), False)]),
        # relative globs start from cwd, and '.' or '..' before the first wildcard are resolved
        ("data/tmp/*.wav=30s", [("/app/data/tmp/*.wav", "/app/data/tmp", timedelta(seconds=30), False)]),
        ("./data/../cache/*=1d", [("/app/cache/*", "/app/cache", timedelta(days=1), False)]),
        # the base stops at the first segment with a wildcard, even with literal segments after it
        ("/var/cache/app/*/thumbs/*.png=7d", [("/var/cache/app/*/thumbs/*.png", "/var/cache/app", timedelta(days=7), False)]),
        ("/tmp/x[0-9]?.log=1h", [("/tmp/x[0-9]?.log", "/tmp", timedelta(hours=1), False)]),
        ("/data/**/cache/**/*.tmp=2h", [("/data/**/cache/**/*.tmp", "/data", timedelta(hours=2), True)]),
        # a path without wildcards names one file: its base is the file's directory
        ("/tmp/report.csv=1h", [("/tmp/report.csv", "/tmp", timedelta(hours=1), False)]),
        # '=' may appear in the glob: the age is what follows the last one
        ("/tmp/a=b/*.mp3=1h", [("/tmp/a=b/*.mp3", "/tmp/a=b", timedelta(hours=1), False)]),
        ("", []),
        ("  ;\n ; ", []),
    ],
)
def test_parse_rules_reads_globs_bases_ages_and_recursion(text: str, expected: list[tuple]) -> None:
    rules = parse_rules(text, APP)
    assert [(r.pattern, str(r.base), r.age, r.recursive) for r in rules] == expected


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("foo", ["'foo' has no '='", "write GLOB=AGE like /tmp/audio/*.mp3=24h"]),
        ("=24h", ["'=24h' has no glob before '='"]),
        ("/tmp/*.mp3=", ["'/tmp/*.mp3=' has no age after '='"]),
        ("/tmp/*.mp3=24x", ["'/tmp/*.mp3=24x'", "'24x' is not a duration", "like 30m, 26h or 7d"]),
        ("/tmp/*.mp3=-1h", ["'-1h' is not a duration"]),
        ("/tmp/*.mp3=0h", ["'/tmp/*.mp3=0h' has an age of zero", "like 10m or 24h"]),
        ("/tmp/a**/*.mp3=1h", ["'**' must be a whole path segment", "/app/data/tmp/**/*.log"]),
        ("/tmp/*/../etc/*=1h", ["'..' after a wildcard could leave the base directory"]),
        ("/tmp/audio/=1h", ["ends with '/'", "/app/data/tmp/*"]),
    ],
)
def test_parse_rules_rejects_a_bad_pair_naming_it_and_how_to_write_it(text: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        parse_rules(text, APP)
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_parse_rules_reports_every_bad_pair_at_once() -> None:
    with pytest.raises(ValueError) as raised:
        parse_rules("/tmp/ok/*.mp3=24h;oops;/tmp/x/*=1q", APP)
    message = str(raised.value)
    assert "'oops' has no '='" in message
    assert "'1q' is not a duration" in message
    assert "/tmp/ok" not in message


@pytest.mark.parametrize(
    "text, described",
    [
        ("/tmp/rose_audio/*.mp3=24h", "/tmp/rose_audio/*.mp3=1d"),
        ("/tmp/rose_audio/*.mp3=26h", "/tmp/rose_audio/*.mp3=26h"),
        ("tmp/**=90m", "/app/tmp/**=90m"),
        ("/tmp/x=45s", "/tmp/x=45s"),
    ],
)
def test_describe_gives_the_rule_back_as_an_operator_writes_it(text: str, described: str) -> None:
    parsed = rule(text)
    assert parsed.describe() == described
    assert parse_rules(parsed.describe(), Path("/elsewhere")) == [parsed]


def database_files(database: Path | None) -> list[Path]:
    """The files a SQLite source protects, as its engine reports them."""
    return SqliteSource(database).protected_files() if database else []


@pytest.mark.parametrize(
    "text, database, fragment",
    [
        ("/**=1d", DATABASE, "would sweep the root directory /"),
        ("/*.log=1d", DATABASE, "would sweep the root directory /"),
        ("/*/tmp/*.log=1d", DATABASE, "would sweep the root directory /"),
        ("/app/*.log=1d", DATABASE, "would sweep the app directory /app"),
        ("*.log=1d", DATABASE, "would sweep the app directory /app"),
        ("/app/**=1d", DATABASE, "would sweep the app directory /app"),
        ("/root/*.txt=1d", DATABASE, "would sweep the home directory /root"),
        ("/app/data/backups/*.tmp=1d", DATABASE, "would sweep the backup directory /app/data/backups"),
        ("data/backups/*=1d", DATABASE, "would sweep the backup directory /app/data/backups"),
        ("/app/data/backups/old/*=1d", DATABASE, "would sweep inside the backup directory /app/data/backups"),
        ("/app/data/**=1d", None, "would sweep the backup directory /app/data/backups; narrow the glob"),
        ("/app/data/**/*.zst=1d", None, "would sweep the backup directory"),
        ("/app/data/*/*.zst=1d", None, "would sweep the backup directory"),
        ("/app/data/b*/*=1d", None, "would sweep the backup directory"),
        ("/app/data/*.db=1d", DATABASE, "would delete the database file /app/data/app.db;"),
        ("/app/data/app.db=1d", DATABASE, "would delete the database file /app/data/app.db;"),
        ("/app/data/*-wal=1d", DATABASE, "would delete the database file /app/data/app.db-wal"),
        ("/app/data/*.db-shm=1d", DATABASE, "would delete the database file /app/data/app.db-shm"),
        ("/app/data/**/*.db-journal=1d", Path("/srv/db/app.db"), "would sweep the backup directory"),
        ("/srv/**/*.db-journal=1d", Path("/srv/db/app.db"), "would delete the database file /srv/db/app.db-journal"),
    ],
)
def test_dangerous_rules_are_refused_with_the_reason(text: str, database: Path | None, fragment: str) -> None:
    reason = dangerous_rule_reason(rule(text), PROTECTED, database_files(database))
    assert reason is not None and fragment in reason


@pytest.mark.parametrize(
    "text, database",
    [
        ("/tmp/rose_audio/*.mp3=24h", DATABASE),
        ("/app/data/tmp/**=6h", DATABASE),
        # under the backup directory's parent, but the glob cannot enter it or match the database
        ("/app/data/tmp*/*=6h", DATABASE),
        ("/app/data/*.mp3=6h", DATABASE),
        # a database on a server has no file to protect
        ("/app/data/*.db=1d", None),
        # a sibling whose name merely starts like a protected directory is not inside it
        ("/app/data/backups-old/*=1d", DATABASE),
        ("/application/*=1d", DATABASE),
    ],
)
def test_safe_rules_are_accepted(text: str, database: Path | None) -> None:
    assert dangerous_rule_reason(rule(text), PROTECTED, database_files(database)) is None


def test_a_base_that_is_a_symlink_to_a_protected_directory_is_refused(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (tmp_path / "to_root").symlink_to("/")
    (tmp_path / "to_app").symlink_to(app)
    protected = [app / "data" / "backups", app, HOME]
    assert "root directory" in dangerous_rule_reason(rule(f"{tmp_path}/to_root/*.mp3=1d"), protected)
    assert "app directory" in dangerous_rule_reason(rule(f"{tmp_path}/to_app/*.mp3=1d"), protected)
    assert dangerous_rule_reason(rule(f"{tmp_path}/elsewhere/*.mp3=1d"), protected) is None
