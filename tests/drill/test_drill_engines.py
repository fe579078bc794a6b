"""Drills that pass (issue 22): the newest backup of each engine fetched from the bucket on an empty volume,
proven, restored into a scratch target and compared with its manifest's counts; the source is the same before and
after, nothing of the drill is left, and the run is a job like the others (events, catalog row, history)."""

import json
from pathlib import Path
import shutil

from tests.conftest import run_worker
from tests.e2e.test_encryption_engines_bucket import keyed
from tests.drill.conftest import drill_env, scratch_databases, temporaries
from tests.postgres.conftest import digests, url_for
from tests.redis.servers import everything, fill, redis_server


def files_of(database: Path) -> dict[str, bytes]:
    """Return the bytes of a SQLite database and of every sidecar it has."""
    return {path.name: path.read_bytes() for path in database.parent.glob(database.name + "*")}


def drilled_row(result, name: str) -> dict:
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["job"] == "drill" and document["outcome"] == "succeeded"
    return document["sources"][name]


def test_a_sqlite_drill_from_the_bucket_on_an_empty_volume_passes_and_leaves_the_source_byte_identical(
        tmp_path: Path, worker_env, app_db: Path, moto_endpoint, bucket) -> None:
    env = drill_env(worker_env, moto_endpoint, bucket)
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    shutil.rmtree(tmp_path / "backups")  # an empty volume: the bucket is all there is
    before = files_of(app_db)
    row = drilled_row(run_worker(["drill", "--json"], env, cwd=tmp_path), "app")
    assert row["location"] == "s3"
    assert {"sha256", "PRAGMA integrity_check", "counts compared"} <= set(row["checks"])
    assert row["compared"] == "1000 rows in 1 table(s), exactly as recorded"
    assert files_of(app_db) == before
    assert temporaries(tmp_path / "backups") == []
    history = run_worker(["history", "--json", "--job", "drill"], env, cwd=tmp_path)
    runs = json.loads(history.stdout)
    assert [run["outcome"] for run in runs] == ["succeeded"]


def test_a_postgresql_drill_from_the_bucket_restores_into_a_scratch_database_that_is_dropped_afterwards(
        tmp_path: Path, worker_env, make_db, moto_endpoint, bucket) -> None:
    app = make_db("drilled", populated=True, events=2000)
    env = {**drill_env(worker_env, moto_endpoint, bucket), "BACKUP_SOURCE": url_for(app)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    shutil.rmtree(tmp_path / "backups")
    before = digests(app)
    result = run_worker(["drill", "--json"], env, cwd=tmp_path)
    row = drilled_row(result, app)
    assert row["location"] == "s3"
    assert row["compared"] == "5700 rows in 5 table(s), exactly as recorded"  # 500 + 2000 + 3000 + 200 + 0
    assert "pg_restore into a scratch database" in row["checks"]
    created = result.event("drill.scratch_created")["database"]
    assert created.startswith(f"{app}_drill_")
    assert scratch_databases(app) == []
    assert digests(app) == before
    assert temporaries(tmp_path / "backups") == []


def test_a_redis_drill_from_the_bucket_loads_the_rdb_into_a_private_server_and_compares_its_keys(
        tmp_path: Path, worker_env, moto_endpoint, bucket) -> None:
    with redis_server(tmp_path / "source") as server:
        fill(server)  # keys with and without a TTL, in databases 0 and 1
        expected = everything(server)
        env = {**drill_env(worker_env, moto_endpoint, bucket), "BACKUP_SOURCE": server.url()}
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        shutil.rmtree(tmp_path / "backups")
        result = run_worker(["drill", "--json"], env, cwd=tmp_path)
        row = drilled_row(result, "redis")
        assert everything(server) == expected
    assert row["location"] == "s3"
    assert {"RDB header and CRC64", "loaded by redis-server", "counts compared"} <= set(row["checks"])
    assert "database(s), as recorded" in row["compared"]
    assert temporaries(tmp_path / "backups") == []


def test_several_sets_are_drilled_in_one_run_each_with_its_own_row_and_local_reads_the_volume(
        tmp_path: Path, worker_env, app_db: Path, make_db, moto_endpoint, bucket) -> None:
    app = make_db("second", populated=True, events=100)
    env = {**drill_env(worker_env, moto_endpoint, bucket), "BACKUP_SOURCE_SHOP": url_for(app)}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    result = run_worker(["drill", "--local", "--json"], env, cwd=tmp_path)
    assert result.code == 0, result.stderr
    rows = json.loads(result.stdout)["sources"]
    assert set(rows) == {"app", "shop"}
    assert {row["location"] for row in rows.values()} == {"local"}
    assert all(row["outcome"] == "succeeded" for row in rows.values())
    only = run_worker(["drill", "--source", "shop"], env, cwd=tmp_path)
    assert only.code == 0, only.stderr
    assert only.stdout.startswith("shop: drill of shop-") and "app:" not in only.stdout
    assert scratch_databases(app) == []


def test_an_encrypted_backup_is_decrypted_for_its_drill_and_without_the_identity_the_drill_says_so(
        tmp_path: Path, worker_env, app_db: Path, moto_endpoint, bucket) -> None:
    env = drill_env(worker_env, moto_endpoint, bucket)
    sealed, opened = keyed(tmp_path, env)
    assert run_worker(["backup"], sealed, cwd=tmp_path).code == 0
    shutil.rmtree(tmp_path / "backups")
    row = drilled_row(run_worker(["drill", "--json"], opened, cwd=tmp_path), "app")
    assert "age authentication" in row["checks"] and row["backup"].endswith(".sqlite")
    blind = run_worker(["drill"], sealed, cwd=tmp_path)
    assert blind.code == 1
    assert "is encrypted (age) and no identity is configured to open it" in blind.stderr


def test_a_backup_whose_manifest_records_no_counts_is_drilled_on_its_proof_and_restore(
        tmp_path: Path, worker_env, app_db: Path) -> None:
    assert run_worker(["backup"], worker_env, cwd=tmp_path).code == 0
    manifest_path = next((tmp_path / "backups").glob("*.json"))
    manifest = json.loads(manifest_path.read_text())
    del manifest["counts"]  # as a backup made before counts were recorded
    manifest_path.write_text(json.dumps(manifest))
    row = drilled_row(run_worker(["drill", "--json"], worker_env, cwd=tmp_path), "app")
    assert row["compared"].startswith("the manifest records no row counts")
    assert "restorable" in row["checks"] and "counts compared" not in row["checks"]
