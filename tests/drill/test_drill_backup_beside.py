"""Issue 22 (from its review): "A due backup is never skipped because of a drill". A drill's scratch files (the
proven raw copy) sit on the backup volume while it restores, so its space check leaves room for a backup of the
set that falls due meanwhile, besides BACKUP_MIN_FREE; a volume without that room fails the drill at preflight.
Real free space on a private tmpfs (a user and mount namespace, as tests/postgres/e2e/test_disk_full.py does); the
drill is held in its restore by another session's uncommitted CREATE TABLE of the same name in its (empty)
DRILL_TARGET_URL."""

import json
import os
from pathlib import Path
import shutil
import subprocess
import sys

import psycopg
import pytest

from tests.postgres.conftest import url_for
from tests.postgres.e2e.conftest import base_env
from tests.postgres.conftest import admin
from tests.postgres.e2e.test_bound_children import wait_for

# BACKUP_MIN_FREE: exactly what the drill's own check needs (its unpacked copy and a backup's room, plus 1 MiB), or
# (SHORT) 1 MiB less than that
COMPUTE = """
import os, pathlib, shutil
from jobs import restore
from jobs.artifacts import BackupSet
from jobs.backups import list_backups
from jobs.destinations.local import LocalDestination
from worker.actions.drill import backup_room
from worker.config import load_config
import threading
config = load_config(os.environ, pathlib.Path.cwd())
source = config.sources[0].source
backups, _ = list_backups(LocalDestination(config.backup_dir), BackupSet(source.name(), source.kind), threading.Event())
needed = restore.raw_needs(backups[0]) + backup_room(source, backups[0])
spare = -(1 << 20) if os.environ.get("SHORT") else (1 << 20)
print(f"{shutil.disk_usage(config.backup_dir).free - needed - spare}B")
"""

SCRIPT = """
set -u
mount -t tmpfs -o size=128m,mode=0700 tmpfs "$BACKUP_DIR"
"$PYTHON" -m worker backup --no-upload >"$FIRST" 2>&1 || { echo first >"$CODE"; exit 0; }
BACKUP_MIN_FREE=$("$PYTHON" -c "$COMPUTE")
export BACKUP_MIN_FREE
"$PYTHON" -m worker drill --local >"$DRILL_OUT" 2>&1 &
drill=$!
tries=0; until [ -e "$GO" ] || [ $tries -gt 1200 ]; do sleep 0.05; tries=$((tries+1)); done
"$PYTHON" -m worker backup --no-upload >"$OUT" 2>"$ERR"
echo $? >"$CODE"
wait $drill
echo $? >"$DRILL_CODE"
"""


def waiting_on_lock(dbname: str) -> bool:
    with admin() as connection:
        return connection.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                                  (dbname,)).fetchone()[0] > 0


def _namespaces() -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount a small tmpfs as BACKUP_DIR")


def _blobs(app: str) -> None:
    with psycopg.connect(url_for(app), autocommit=True) as connection:
        connection.execute("CREATE TABLE blobs (id int PRIMARY KEY, data bytea)")
        connection.execute("ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL")
        for number in range(20):
            connection.execute("INSERT INTO blobs VALUES (%s, %s)", (number, os.urandom(1 << 20)))


def test_a_volume_without_room_for_a_backup_beside_the_drill_fails_the_drill_at_preflight(
        tmp_path: Path, make_db) -> None:
    _namespaces()
    app = make_db("short")
    _blobs(app)
    (tmp_path / "backups").mkdir()
    out = tmp_path / "drill_out"
    env = base_env(tmp_path, url_for(app), PYTHON=sys.executable, COMPUTE=COMPUTE, SHORT="1", OUT=str(out))
    script = """
set -u
mount -t tmpfs -o size=128m,mode=0700 tmpfs "$BACKUP_DIR"
"$PYTHON" -m worker backup --no-upload >/dev/null 2>&1 || { echo first >"$OUT"; exit 0; }
BACKUP_MIN_FREE=$("$PYTHON" -c "$COMPUTE")
export BACKUP_MIN_FREE
"$PYTHON" -m worker drill --local --json >"$OUT" 2>/dev/null
"""
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, cwd=tmp_path, timeout=180)
    text = out.read_text()
    assert text.strip() != "first"
    row = next(iter(json.loads(text)["sources"].values()))
    assert row["outcome"] == "failed" and row["stage"] == "preflight", row
    assert "room for a backup of the set that may fall due meanwhile" in row["reason"]


def test_a_backup_due_while_a_drill_restores_is_not_refused_for_the_drills_scratch_files(
        tmp_path: Path, make_db) -> None:
    _namespaces()
    app = make_db("beside")
    target = make_db("beside_target")
    _blobs(app)
    (tmp_path / "backups").mkdir()
    files = {name: tmp_path / name for name in ("first", "drill_out", "go", "out", "err", "code", "drill_code")}
    env = base_env(tmp_path, url_for(app), PYTHON=sys.executable, COMPUTE=COMPUTE, DRILL_TARGET_URL=url_for(target),
                   **{name.upper(): str(path) for name, path in files.items()})
    holder = psycopg.connect(url_for(target))
    # uncommitted, so the target is empty to the drill; pg_restore's CREATE TABLE blobs waits for this transaction
    holder.execute("CREATE TABLE public.blobs (held int)")
    shell = subprocess.Popen(["unshare", "-rm", "sh", "-c", SCRIPT], env=env, cwd=tmp_path)
    try:
        wait_for(lambda: files["code"].exists() or waiting_on_lock(target), 90,
                 "the drill's pg_restore did not wait on the view's lock")
        files["go"].touch()
        wait_for(lambda: files["code"].exists(), 90, "the backup beside the drill did not finish")
    finally:
        holder.rollback()
        holder.close()
        try:
            shell.wait(90)
        except subprocess.TimeoutExpired:
            shell.kill()
    code = files["code"].read_text().strip()
    assert code != "first", files["first"].read_text()
    assert code == "0", files["out"].read_text() + files["err"].read_text()[-1500:]
    assert files["drill_code"].read_text().strip() == "0", files["drill_out"].read_text()[-1500:]
