"""Two services that share a bucket under one default set name never restore or delete each other's backups
(moto over HTTP). Each "service" has its own volume and its own `.../data/app.db`, as two Railway services would."""

import json
from pathlib import Path
import sqlite3

from tests.conftest import make_app_db, run_worker
from .test_cli_s3 import keys, s3_env  # noqa: F401  (the fixture)
from .test_selection_s3 import age_in_bucket


def count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def service(tmp_path: Path, s3_env: dict[str, str], name: str, rows: int) -> tuple[dict[str, str], Path, Path]:
    """A service's environment, its database (`<root>/data/app.db`) and its working directory."""
    root = tmp_path / name
    (root / "data").mkdir(parents=True)
    db = make_app_db(root / "data" / "app.db", rows=rows)
    env = {**s3_env, "BACKUP_SOURCE": "sqlite:///data/app.db", "BACKUP_DIR": str(root / "data" / "backups"),
           "RAILWAY_SERVICE_ID": f"service-{name}", "RAILWAY_ENVIRONMENT_ID": "production"}
    return env, db, root


def test_two_services_with_the_same_set_name_in_one_bucket_never_touch_each_others_backups(tmp_path: Path, s3_env, s3_client, bucket) -> None:
    a_env, a_db, a_root = service(tmp_path, s3_env, "a", rows=1000)
    b_env, b_db, b_root = service(tmp_path, s3_env, "b", rows=7)
    older = run_worker(["backup"], a_env, cwd=a_root)
    assert older.code == 0, older.stderr
    age_in_bucket(s3_client, bucket, older.event("job.succeeded")["artifact"], days=10)
    first = run_worker(["backup"], a_env, cwd=a_root)
    assert first.code == 0, first.stderr
    a_artifact = first.event("job.succeeded")["artifact"]
    manifest = json.loads((a_root / "data" / "backups" / f"{a_artifact}.json").read_text())
    assert manifest["source"]["path"] == str(a_db)
    assert manifest["source"]["railway_service_id"] == "service-a"
    before = keys(s3_client, bucket)

    refused = run_worker(["backup"], b_env, cwd=b_root)
    assert refused.code == 1
    assert refused.event("job.failed")["stage"] == "preflight"
    assert "BACKUP_NAME" in refused.stderr and "S3_PREFIX" in refused.stderr and a_artifact.removesuffix(".zst") in refused.stderr
    assert keys(s3_client, bucket) == before, "nothing of B's reached the bucket"

    b_before = b_db.read_bytes()
    latest = run_worker(["restore", "--from-s3", "--latest", "--yes"], b_env, cwd=b_root)
    assert latest.code == 2
    assert str(a_db) in latest.stderr and str(b_db) in latest.stderr
    assert b_db.read_bytes() == b_before and count(b_db) == 7

    prune = run_worker(["prune"], {**b_env, "S3_RETENTION_DAYS": "1", "BACKUP_KEEP_MIN": "1"}, cwd=b_root)
    assert prune.code == 1 and "belongs to another source" in prune.stderr
    assert keys(s3_client, bucket) == before, "A's ten-day-old backup is not B's to delete"


def test_a_recreated_service_takes_its_set_over_by_restoring_a_backup_by_id(tmp_path: Path, s3_env, s3_client, bucket) -> None:
    """A lost project: the service is recreated with a new id and an empty volume; restoring by id with --yes takes
    the set over, and its next backups are accepted."""
    old_env, _, old_root = service(tmp_path, s3_env, "old", rows=1000)
    made = run_worker(["backup"], old_env, cwd=old_root)
    assert made.code == 0, made.stderr
    ident = made.event("job.succeeded")["backup"]

    new_env, new_db, new_root = service(tmp_path, s3_env, "new", rows=0)
    restored = run_worker(["restore", "--from-s3", ident, "--yes"], new_env, cwd=new_root)
    assert restored.code == 0, restored.stderr
    assert count(new_db) == 1000
    assert "owns the backup set" in restored.stdout
    again = run_worker(["backup"], new_env, cwd=new_root)
    assert again.code == 0, again.stderr
    assert again.event("job.succeeded")["uploaded"]


def test_off_railway_two_machines_with_one_path_are_two_sources_and_take_over_is_explicit(tmp_path: Path, s3_env, s3_client, bucket) -> None:
    """No Railway ids: each installation's own id (in its backup directory) tells two machines apart."""
    (tmp_path / "srv").mkdir()
    db = make_app_db(tmp_path / "srv" / "app.db", rows=20)
    first = {**s3_env, "BACKUP_SOURCE": f"sqlite:///{db}", "BACKUP_DIR": str(tmp_path / "machine-1")}
    second = {**first, "BACKUP_DIR": str(tmp_path / "machine-2")}
    assert run_worker(["backup"], first, cwd=tmp_path).code == 0
    refused = run_worker(["backup"], second, cwd=tmp_path)
    assert refused.code == 1 and "installation" in refused.stderr
    assert "--take-over" in refused.stderr and "restore" not in refused.stderr.split("belongs to another source")[1]
    latest = run_worker(["restore", "--from-s3", "--latest", "--yes"], second, cwd=tmp_path)
    assert latest.code == 2

    taken = run_worker(["backup", "--take-over"], second, cwd=tmp_path)
    assert taken.code == 0, taken.stderr
    assert "takes the set over" in taken.stdout
    again = run_worker(["backup"], first, cwd=tmp_path)  # the former owner is refused now: never two live sources
    assert again.code == 1 and "belongs to another source" in again.stderr
