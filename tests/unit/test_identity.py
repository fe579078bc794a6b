"""Whose backup is this (jobs.identity): what a manifest records, when two sources are the same, and when a
backup set is taken by another source."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from jobs import identity
from jobs.artifacts import BackupSet
from jobs.backups import Backup
from jobs.engines.postgres import open_source as open_postgres
from jobs.engines.redis import open_source as open_redis
from jobs.engines.sqlite import open_source as open_sqlite
from jobs.errors import SourceError

NOW = datetime.now(timezone.utc)
APP = BackupSet("app", "sqlite")
A = {"kind": "sqlite", "path": "/app/data/app.db", "railway_service_id": "svc-a", "railway_environment_id": "env-1"}
B = {**A, "railway_service_id": "svc-b"}


@pytest.mark.parametrize(
    "source, env, expected",
    [
        (open_sqlite("sqlite:////app/data/app.db", Path("/")), {}, {"kind": "sqlite", "path": "/app/data/app.db"}),
        (open_sqlite("sqlite:///data/app.db", Path("/srv")), {"RAILWAY_SERVICE_ID": "s", "RAILWAY_ENVIRONMENT_ID": "e"},
         {"kind": "sqlite", "path": "/srv/data/app.db", "railway_service_id": "s", "railway_environment_id": "e"}),
        (open_postgres("postgresql://u:secret@127.0.0.1:1/shop", Path("/")), {"RAILWAY_SERVICE_ID": "s", "RAILWAY_ENVIRONMENT_ID": "e"},
         {"kind": "pgdump", "host": "127.0.0.1", "port": "1", "database": "shop", "railway_environment_id": "e"}),
        (open_postgres("postgresql:///shop?host=/run/postgresql", Path("/")), {},
         {"kind": "pgdump", "host": "/run/postgresql", "port": "5432", "database": "shop"}),
        (open_redis("redis://default:secret@cache:6380/0", Path("/")), {}, {"kind": "rdb", "host": "cache", "port": "6380"}),
    ],
)
def test_a_source_records_who_it_is_without_secrets(source, env, expected) -> None:
    found = identity.of(source, None, env)
    assert found == expected
    assert "secret" not in str(found)


@pytest.mark.parametrize(
    "case, a, b, same",
    [
        ("identical", A, dict(A), True),
        ("another Railway service with the same path", A, B, False),
        ("another environment", A, {**A, "railway_environment_id": "env-2"}, False),
        ("another path", A, {**A, "path": "/app/data/other.db"}, False),
        ("on Railway and off it", A, {"kind": "sqlite", "path": "/app/data/app.db"}, False),
        ("host names without case", {"kind": "pgdump", "host": "DB.internal", "port": "5432", "database": "shop"},
         {"kind": "pgdump", "host": "db.internal", "port": "5432", "database": "shop"}, True),
        ("another database on the same server", {"kind": "pgdump", "host": "h", "port": "5432", "database": "a"},
         {"kind": "pgdump", "host": "h", "port": "5432", "database": "b"}, False),
        ("another port", {"kind": "rdb", "host": "h", "port": "6379"}, {"kind": "rdb", "host": "h", "port": "6380"}, False),
        ("another kind", A, {**A, "kind": "pgdump"}, False),
        ("one server reached under two addresses", {"kind": "pgdump", "host": "127.0.0.1", "port": "5432", "database": "shop", "cluster": "7715"},
         {"kind": "pgdump", "host": "localhost", "port": "6432", "database": "shop", "cluster": "7715"}, True),
        ("two servers under one address", {"kind": "pgdump", "host": "db", "port": "5432", "database": "shop", "cluster": "1"},
         {"kind": "pgdump", "host": "db", "port": "5432", "database": "shop", "cluster": "2"}, False),
        ("a server whose id one side could not read: by address", {"kind": "pgdump", "host": "db", "port": "5432", "database": "shop", "cluster": "1"},
         {"kind": "pgdump", "host": "db", "port": "5432", "database": "shop"}, True),
        ("two machines with one path off Railway", {"kind": "sqlite", "path": "/app/data/app.db", "install": "a" * 32},
         {"kind": "sqlite", "path": "/app/data/app.db", "install": "b" * 32}, False),
        ("a manifest from before install ids", {"kind": "sqlite", "path": "/app/data/app.db", "install": "a" * 32},
         {"kind": "sqlite", "path": "/app/data/app.db"}, True),
    ],
)
def test_two_identities_are_the_same_source_only_when_every_field_matches(case, a, b, same) -> None:
    assert identity.same(a, b) is same, case


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"kind": "sqlite", "database": "app.db"}, None),  # written before identities: nobody in particular
        ({"kind": "sqlite", "path": "/a.db", "database": "a.db"}, {"kind": "sqlite", "path": "/a.db"}),
        ({"kind": "sqlite", "path": ["/a.db"]}, None),  # untrusted: a list is not a path
        ({"kind": "mystery", "path": "/a.db"}, None),
        ("not a mapping", None),
        ({"kind": "rdb", "host": "h", "port": 6379, "railway_environment_id": True}, {"kind": "rdb", "host": "h", "port": "6379"}),
    ],
)
def test_what_a_manifest_records_is_read_as_untrusted_input(record, expected) -> None:
    assert identity.recorded(record) == expected


def made_by(maker: dict | None, hours_old: float) -> Backup:
    stamp = NOW.replace(microsecond=0) - timedelta(hours=hours_old)
    artifact = f"app-{stamp:%Y%m%dT%H%M%SZ}.sqlite.zst"
    source = {"kind": "sqlite", "database": "app.db", **(maker or {})}
    return Backup(id=artifact.removesuffix(".zst"), artifact=artifact, created_at=stamp, size=1, sha256="0" * 64,
                  verified=True, manifest={"source": source})


@pytest.mark.parametrize(
    "case, backups, adopted, refused",
    [
        ("an empty set is anybody's", [], [], False),
        ("our own backups", [made_by(A, 1), made_by(A, 2)], [], False),
        ("another service's newest backup", [made_by(B, 1), made_by(A, 2)], [], True),
        ("taken over from that service", [made_by(B, 1)], [{**B, "adopted_at": NOW.isoformat()}], False),
        ("the former owner wrote again after the takeover", [made_by(B, 1)],
         [{**B, "adopted_at": (NOW - timedelta(hours=2)).isoformat()}], True),
        ("ours is the newest again after a takeover", [made_by(A, 1), made_by(B, 2)], [], False),
        ("the newest records no maker: the older maker decides", [made_by(None, 1), made_by(B, 2)], [], True),
        ("only backups from before identities", [made_by(None, 1)], [], False),
        ("another's backup dated in the future does not decide", [made_by(B, -48), made_by(A, 1)], [], False),
    ],
)
def test_a_backup_set_belongs_to_the_source_of_its_newest_backup(case, backups, adopted, refused) -> None:
    problem = identity.collision(backups, A, adopted, APP, "s3://bucket/prod")
    assert (problem is not None) is refused, case
    if refused:
        assert "BACKUP_NAME" in problem and "S3_PREFIX" in problem and "svc-b"[:5] in problem
        with pytest.raises(SourceError):
            identity.require_own(backups, A, adopted, APP, "s3://bucket/prod")


def test_a_takeover_is_remembered_in_the_backup_directory(tmp_path: Path) -> None:
    assert identity.adopted(tmp_path, APP) == []
    identity.adopt(tmp_path, APP, B)
    identity.adopt(tmp_path, APP, B)
    (taken,) = identity.adopted(tmp_path, APP)
    assert identity.same(taken, B) and datetime.fromisoformat(taken["adopted_at"]) <= datetime.now(timezone.utc)
    assert identity.adopted(tmp_path, BackupSet("app", "pgdump")) == []
    (tmp_path / identity.ADOPTED_NAME).write_text("{not json")
    assert identity.adopted(tmp_path, APP) == []


def test_off_railway_a_file_database_carries_the_id_of_its_installation(tmp_path: Path) -> None:
    source = open_sqlite("sqlite:////app/data/app.db", Path("/"))
    first = identity.of(source, tmp_path, {})
    assert len(first["install"]) == 32 and identity.of(source, tmp_path, {}) == first
    (tmp_path / "elsewhere").mkdir()
    other = identity.of(source, tmp_path / "elsewhere", {})
    assert not identity.same(first, other)
    on_railway = identity.of(source, tmp_path, {"RAILWAY_SERVICE_ID": "s"})
    assert "install" not in on_railway


def test_a_postgres_source_knows_its_server_by_its_system_identifier() -> None:
    from tests.purge.conftest import PG_HOST, PG_PORT, PG_USER

    pg_url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"
    via_ip = identity.of(open_postgres(pg_url, Path("/")), None, {})
    via_name = identity.of(open_postgres(pg_url.replace("127.0.0.1", "localhost"), Path("/")), None, {})
    assert via_ip["cluster"] and via_ip["cluster"] == via_name["cluster"]
    assert identity.same(via_ip, via_name)


PG = {"kind": "pgdump", "host": "postgres.railway.internal", "port": "5432", "database": "railway",
      "cluster": "7715951247765429235", "railway_environment_id": "prod"}
LITE = {"kind": "sqlite", "path": "/app/data/app.db", "install": "a" * 32}


@pytest.mark.parametrize("theirs, ours, recovered, same", [
    (PG, {**PG, "cluster": "7716000000000000001"}, True, False),  # the server recreated after a lost volume
    (PG, PG, True, True),
    (PG, {**PG, "database": "other"}, False, False),
    (PG, {**PG, "railway_environment_id": "staging"}, False, False),  # another project's service at that name
    (PG, {**PG, "host": "db.example.com", "cluster": "1"}, False, False),
    ({**PG, "host": "db.example.com"}, PG, True, True),  # the same server under another name
    (LITE, {**LITE, "install": "b" * 32}, True, False),  # a lost volume off Railway: a new installation
    (LITE, {k: v for k, v in LITE.items() if k != "install"}, True, True),
    (LITE, {**LITE, "path": "/app/data/other.db"}, False, False),
    (LITE, {**PG}, False, False),
])
def test_same_recovered_sets_aside_what_losing_the_data_renews_and_nothing_else(theirs, ours, recovered, same) -> None:
    assert identity.same_recovered(theirs, ours) is recovered
    assert identity.same(theirs, ours) is same  # the owner check of a backup stays strict


def test_a_postgres_source_reads_its_server_identifier_again_once_a_cycle_is_over(monkeypatch) -> None:
    """Sources live as long as the process (worker.sources): a server unknown once, or replaced between two
    nights, is seen as it is by the next backup's manifest."""
    from jobs.engines import pg_connect, postgres

    source = open_postgres("postgresql://postgres@127.0.0.1:5432/shop", Path("/"))
    answers = iter([None, "1111", "2222"])
    monkeypatch.setattr(pg_connect, "cluster_id", lambda conn: next(answers))
    clock = [1000.0]
    monkeypatch.setattr(postgres.time, "monotonic", lambda: clock[0])
    assert "cluster" not in identity.of(source, None)  # the server did not answer: nothing kept
    assert identity.of(source, None)["cluster"] == "1111"
    assert identity.of(source, None)["cluster"] == "1111"  # within a cycle: read once
    clock[0] += postgres.CLUSTER_FRESH_S + 1  # the next night
    assert identity.of(source, None)["cluster"] == "2222"
