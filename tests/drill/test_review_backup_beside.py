"""Review of issue 22: "A due backup is never skipped because of a drill". A drill's scratch files (the proven raw
copy) sit on the backup volume while it restores; its space check leaves BACKUP_MIN_FREE for the app but no room
for a backup that falls due meanwhile (the drill takes no lock and does not yield), so that backup is refused at
preflight. Real ENOSPC accounting on a private tmpfs (a user and mount namespace, as tests/postgres/e2e/
test_disk_full.py does); the drill is held in its restore by a lock on a view of its DRILL_TARGET_URL."""

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

# BACKUP_MIN_FREE: exactly what the drill's own check needs (its unpacked copy and 16 MiB of headroom, plus 1 MiB)
COMPUTE = """
import json, pathlib, shutil, os
directory = pathlib.Path(os.environ["BACKUP_DIR"])
raw = json.loads(next(directory.glob("*.pgdump.zst.json")).read_text())["raw_size"]
print(f"{shutil.disk_usage(directory).free - raw - (17 << 20)}B")
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


def test_a_backup_due_while_a_drill_restores_is_not_refused_for_the_drills_scratch_files(
        tmp_path: Path, make_db) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount a small tmpfs as BACKUP_DIR")
    app = make_db("beside")
    target = make_db("beside_target")
    with psycopg.connect(url_for(app), autocommit=True) as connection:
        connection.execute("CREATE TABLE blobs (id int PRIMARY KEY, data bytea)")
        connection.execute("ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL")
        for number in range(20):
            connection.execute("INSERT INTO blobs VALUES (%s, %s)", (number, os.urandom(1 << 20)))
        connection.execute("CREATE VIEW blob_ids AS SELECT id FROM blobs")
    with psycopg.connect(url_for(target), autocommit=True) as connection:
        connection.execute("CREATE VIEW blob_ids AS SELECT 1 AS id")  # no table: the target counts as empty
    (tmp_path / "backups").mkdir()
    files = {name: tmp_path / name for name in ("first", "drill_out", "go", "out", "err", "code", "drill_code")}
    env = base_env(tmp_path, url_for(app), PYTHON=sys.executable, COMPUTE=COMPUTE, DRILL_TARGET_URL=url_for(target),
                   **{name.upper(): str(path) for name, path in files.items()})
    holder = psycopg.connect(url_for(target))
    holder.execute("LOCK TABLE blob_ids IN ACCESS EXCLUSIVE MODE")  # pg_restore --clean waits on its DROP VIEW
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
