"""Every recipe in docs/recovery.md, run step by step as written, against real servers and a bucket over HTTP
(moto), with the "volume" wiped and the data checked with table digests.

The test reads each `<!-- recipe: NAME -->` code block and runs its lines as a user's terminal would reach the
worker: `railway ssh [--service S] -- backup-worker ARGS` runs `python -m worker ARGS` with the service's
environment, `railway variables [--service S] --set "NAME=VALUE"` changes that environment, and
`railway redeploy` / `railway restart` stop the service's `run` process (if any) and start a new one, waiting
until it has started (and, for `--exec`, until the app has). A line the test does not know fails the test, so a
recipe cannot drift from what is tested."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
import hashlib
import json
from pathlib import Path
import re
import shlex
import shutil
import sqlite3
import subprocess

import psycopg
import pytest

from tests.conftest import ROOT, Result, make_app_db, run_worker
from tests.e2e.started import Started
from tests.e2e.test_restore_at_start import app_command, app_records, s3_env
from tests.postgres.conftest import digests, make_db, url_for  # noqa: F401  (fixture)
from tests.redis.servers import fill, redis_server
from tests.s3.conftest import (aws_env, boto_session, bucket, client_for, moto_endpoint, s3_client,  # noqa: F401
                               s3_endpoint, s3_server)

DOC = ROOT / "docs" / "recovery.md"
_BLOCK = re.compile(r"<!-- recipe: (?P<name>[a-z0-9-]+) -->\s*```sh\n(?P<body>.*?)```", re.DOTALL)
_CLEARED = ("BACKUP_", "S3_", "CLEANUP_", "AWS_", "CATALOG_", "LOG_", "DATABASE_URL", "FRESHNESS_", "RAILWAY_",
            "RESTORE_", "RETENTION_RULES", "NOTIFY_", "HEALTH")


def recipes() -> dict[str, list[str]]:
    """Return each recipe of docs/recovery.md: its command lines, comments and blank lines left out."""
    found = {match["name"]: [line.split("  #")[0].strip() for line in match["body"].splitlines()
                             if line.strip() and not line.strip().startswith("#")]
             for match in _BLOCK.finditer(DOC.read_text())}
    assert found, "docs/recovery.md has no recipe blocks"
    return found


@dataclass
class Service:
    """One Railway service as the recipe sees it: its environment, its working directory (the container's), the
    `--exec` app it runs (layout 1), and its running `run` process."""

    env: dict[str, str]
    cwd: Path
    exec_command: str | None = None
    running: Started | None = None

    def deploy(self) -> Started:
        """A new deployment: the old process gets SIGTERM, a new `run` starts; wait until it is up."""
        self.stop()
        args = ["run", *(["--exec", self.exec_command] if self.exec_command else [])]
        self.running = Started(args, self.env, self.cwd)
        self.running.wait_for("worker.started", timeout=120)
        return self.running

    def stop(self) -> None:
        if self.running is not None:
            assert self.running.stop() == 0
            self.running = None


def follow(name: str, services: dict[str, Service], paths: dict[str, Path]) -> list[Result]:
    """Run the recipe `name` line by line; `paths` maps the container paths it names (/app/data, /data) to the
    test's directories. Return the results of its one-shot commands."""
    results: list[Result] = []
    for line in recipes()[name]:
        for container, local in paths.items():
            line = line.replace(container, str(local))
        words = shlex.split(line)
        assert words[0] == "railway", f"{name}: a step the test cannot run: {line}"
        service = services[words[words.index("--service") + 1] if "--service" in words else "app"]
        if words[1] == "ssh":
            command = words[words.index("--") + 1:]
            assert command[0] == "backup-worker", line
            result = run_worker(command[1:], service.env, cwd=service.cwd, timeout=300)
            assert result.code == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            results.append(result)
        elif words[1] == "variables":
            variable, _, value = words[words.index("--set") + 1].partition("=")
            service.env[variable] = value
        elif words[1] in ("redeploy", "restart"):
            service.deploy()
        else:
            raise AssertionError(f"{name}: a step the test cannot run: {line}")
    return results


def worker_env(tmp_path: Path, endpoint: str, bucket_name: str, **extra: str) -> dict[str, str]:
    import os

    env = {key: value for key, value in os.environ.items() if not key.startswith(_CLEARED)}
    env.update(PYTHONPATH=str(ROOT), **s3_env(endpoint, bucket_name), **extra)
    return env


def sqlite_digest(db: Path) -> tuple[int, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT id, body, hex(payload) FROM messages ORDER BY id").fetchall()
    return len(rows), hashlib.sha256(repr(rows).encode()).hexdigest()


@pytest.fixture
def services() -> Iterator[dict[str, Service]]:
    made: dict[str, Service] = {}
    yield made
    for service in made.values():
        if service.running is not None:
            service.running.kill()


def test_sqlite_volume_lost(tmp_path: Path, moto_endpoint: str, bucket: str, services: dict[str, Service]) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    db = make_app_db(volume / "rose.db", rows=1500)
    env = worker_env(tmp_path, moto_endpoint, bucket, BACKUP_SOURCE=f"sqlite:///{db}",
                     RAILWAY_VOLUME_MOUNT_PATH=str(volume), RAILWAY_SERVICE_ID="svc-rose", RAILWAY_ENVIRONMENT_ID="prod")
    services["app"] = Service(env, tmp_path, exec_command=app_command(tmp_path, db))
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0  # a night's backup, uploaded
    expected = sqlite_digest(db)
    shutil.rmtree(volume)  # the volume is gone: database, backups, catalog
    volume.mkdir()  # a new, empty one at the same mount path

    results = follow("sqlite-volume-lost", services, {"/app/data": volume})

    worker = services["app"].running
    restored = worker.wait_for("restore.on_start")
    assert restored["location"] == "s3"
    names = worker.names()
    assert names.index("restore.on_start") < names.index("app.started")
    assert app_records(tmp_path)[0]["rows"] == 1500  # the app started on the restored data
    catch_up = worker.wait_for("job.succeeded", job="backup")
    assert sqlite_digest(db) == expected
    status = results[-1].stdout
    assert catch_up["artifact"].removesuffix(".zst") in status and "health: ok" in status
    copy = tmp_path / "catch-up.db"
    fetched = run_worker(["restore", catch_up["backup"], "--from-s3", "--to", str(copy)], services["app"].env, cwd=tmp_path)
    assert fetched.code == 0, fetched.stderr
    assert sqlite_digest(copy) == expected  # the newest copy in the bucket holds the data, not an empty database


def test_sqlite_bad_data(tmp_path: Path, moto_endpoint: str, bucket: str, services: dict[str, Service]) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    db = make_app_db(volume / "rose.db", rows=800)
    env = worker_env(tmp_path, moto_endpoint, bucket, BACKUP_SOURCE=f"sqlite:///{db}", RAILWAY_VOLUME_MOUNT_PATH=str(volume))
    services["app"] = Service(env, tmp_path, exec_command=app_command(tmp_path, db))
    services["app"].deploy()
    services["app"].running.wait_for("job.succeeded", job="backup")  # the catch-up backup: the good state
    expected = sqlite_digest(db)
    with sqlite3.connect(db) as connection:  # a bad migration
        connection.execute("UPDATE messages SET body = 'oops'")

    results = follow("sqlite-bad-data", services, {"/app/data": volume})

    assert sqlite_digest(volume / "inspect.db") == expected
    assert sqlite_digest(db) == expected
    assert "saved as" in results[2].stdout
    assert any(path.name.startswith("rose.db.pre-restore-") for path in volume.iterdir())


def test_postgres_recreated_empty(tmp_path: Path, moto_endpoint: str, bucket: str, services: dict[str, Service],
                                  make_db: Callable[..., str]) -> None:
    name = make_db("shop", populated=True)
    volume = tmp_path / "worker-volume"
    volume.mkdir()
    env = worker_env(tmp_path, moto_endpoint, bucket, DATABASE_URL=url_for(name), RAILWAY_VOLUME_MOUNT_PATH=str(volume))
    services["backup-worker"] = Service(env, tmp_path)
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    expected = digests(name)
    schema = subprocess.run(["pg_dump", "--schema-only", "--no-owner", url_for(name)], capture_output=True, text=True,
                            check=True).stdout
    with psycopg.connect(url_for("postgres"), autocommit=True) as admin:  # the database service lost its volume
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    # the app, redeployed with its database, ran its migrations first: its tables are back, without a row
    subprocess.run(["psql", "--quiet", "--set", "ON_ERROR_STOP=1", "--dbname", url_for(name)], input=schema, text=True,
                   capture_output=True, check=True)

    results = follow("postgres-recreated-empty", services, {"/data": volume})

    worker = services["backup-worker"].running
    restored = worker.wait_for("restore.on_start")
    assert digests(name) == expected
    # the worker's own backups were fresh, so no catch-up was due: status names the backup just restored
    assert restored["backup"] in results[-1].stdout and "health: ok" in results[-1].stdout


def test_several_sets(tmp_path: Path, moto_endpoint: str, bucket: str, services: dict[str, Service],
                      make_db: Callable[..., str]) -> None:
    name = make_db("shop", populated=True)
    volume = tmp_path / "worker-volume"
    volume.mkdir()
    with redis_server(tmp_path / "redis") as cache:
        fill(cache)
        keys = {db: cache.client(db).dbsize() for db in (0, 1)}
        env = worker_env(tmp_path, moto_endpoint, bucket, DATABASE_URL=url_for(name), BACKUP_SOURCE_REDIS=cache.url(),
                         RAILWAY_VOLUME_MOUNT_PATH=str(volume))
        services["backup-worker"] = Service(env, tmp_path)
        assert run_worker(["backup"], env, cwd=tmp_path).code == 0
        expected = digests(name)
        with psycopg.connect(url_for("postgres"), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')

        follow("several-sets", services, {"/data": volume})

        worker = services["backup-worker"].running
        assert worker.wait_for("restore.on_start")["set"] == name
        assert worker.wait_for("restore.on_start_skipped")
        services["backup-worker"].stop()
        assert digests(name) == expected
    dump = volume / "dump.rdb"
    assert subprocess.run(["redis-check-rdb", str(dump)], capture_output=True).returncode == 0
    (tmp_path / "loaded").mkdir()
    shutil.copy(dump, tmp_path / "loaded" / "dump.rdb")  # loaded as the README's Redis section says
    with redis_server(tmp_path / "loaded") as loaded:
        assert {db: loaded.client(db).dbsize() for db in (0, 1)} == keys
        info = {db: fields["keys"] for db, fields in loaded.client(0).info("keyspace").items()}
    manifest = json.loads(max(volume.rglob("*.rdb.zst.json")).read_text())  # "compare with rdb.keys in the manifest"
    assert manifest["rdb"]["keys"] == info


def test_worker_volume_lost(tmp_path: Path, moto_endpoint: str, bucket: str, services: dict[str, Service],
                            make_db: Callable[..., str]) -> None:
    name = make_db("shop", populated=True)
    volume = tmp_path / "worker-volume"
    volume.mkdir()
    env = worker_env(tmp_path, moto_endpoint, bucket, DATABASE_URL=url_for(name), RAILWAY_VOLUME_MOUNT_PATH=str(volume))
    services["backup-worker"] = Service(env, tmp_path)
    first = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert first.code == 0
    shutil.rmtree(volume)
    volume.mkdir()

    results = follow("worker-volume-lost", services, {"/data": volume})

    assert json.loads(first.stdout)["backup"] in results[0].stdout
    listed = subprocess.run(["pg_restore", "--list", str(volume / "restore.pgdump")], capture_output=True, text=True)
    assert listed.returncode == 0 and "TABLE DATA public events" in listed.stdout


def test_every_recipe_in_the_doc_has_a_test() -> None:
    tested = {name.removeprefix("test_").replace("_", "-") for name in globals() if name.startswith("test_")}
    assert set(recipes()) <= tested, f"recipes without a test: {set(recipes()) - tested}"
