"""A backup that runs out of room while it writes names the file and the volume, through the CLI: a real ENOSPC
on a small tmpfs mounted as BACKUP_DIR (in a private user and mount namespace), and a file size limit (EFBIG).

A PostgreSQL source streams pg_dump into the compressor, so the artifact is the first file the backup writes.
The test holds a table lock so pg_dump waits until the volume has been filled behind the preflight's back, as
the app's own writes would fill it."""

import json
from pathlib import Path
import resource
import shutil
import subprocess
import sys
import time

import pytest

from tests.postgres.conftest import url_for
from tests.postgres.e2e.conftest import base_env, plain_lines
from tests.postgres.e2e.test_bound_children import app_in_transaction, sessions, wait_for
from tests.conftest import Result

# Inside a new user and mount namespace: mount a small tmpfs as BACKUP_DIR, start the backup, and once its
# temporary artifact exists fill the volume to the last byte; then wait for the backup's exit status.
FILL_AND_BACK_UP = """
set -u
mount -t tmpfs -o size=64m,mode=0700 tmpfs "$BACKUP_DIR"
"$PYTHON" -m worker backup --no-upload >"$OUT" 2>"$ERR" &
worker=$!
until ls "$BACKUP_DIR"/.tmp-*.pgdump.zst >/dev/null 2>&1; do sleep 0.05; done
dd if=/dev/zero of="$BACKUP_DIR/the-apps-file" bs=1M status=none 2>/dev/null
touch "$FILLED"
wait $worker
echo $? >"$CODE"
"""


def failed_event(stderr: str) -> dict:
    return [json.loads(line) for line in stderr.splitlines() if '"job.failed"' in line][-1]


def test_a_full_volume_names_the_artifact_being_written_and_the_volumes_free_space(app_pg, tmp_path: Path) -> None:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to mount a small tmpfs as BACKUP_DIR")
    backups = tmp_path / "backups"
    backups.mkdir()
    files = {name: tmp_path / name for name in ("out", "err", "filled", "code")}
    env = base_env(tmp_path, url_for(app_pg), PYTHON=sys.executable, **{name.upper(): str(path) for name, path in files.items()})
    with app_in_transaction(app_pg, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE"):
        shell = subprocess.Popen(["unshare", "-rm", "sh", "-c", FILL_AND_BACK_UP], env=env, cwd=tmp_path)
        try:
            wait_for(lambda: files["filled"].exists(), 60, "the volume was not filled")
        except AssertionError:
            shell.kill()
            raise
    assert shell.wait(60) == 0
    assert files["code"].read_text().strip() == "1"
    stderr = files["err"].read_text()
    event = failed_event(stderr)
    assert event["stage"] == "compress"
    reason = event["reason"]
    assert reason.startswith(f"compress failed writing {backups}/{app_pg}-") and ".pgdump.zst: No space left on device" in reason
    assert f"the volume holding {backups} has 0 MiB free of 64 MiB" in reason and "free space or grow the volume" in reason
    assert plain_lines(Result(subprocess.CompletedProcess([], 1, "", stderr)))[-1].endswith(reason)
    assert not sessions(app_pg, "pg_dump")


def test_a_file_size_limit_names_the_artifact_and_the_limit(app_pg, tmp_path: Path) -> None:
    env = base_env(tmp_path, url_for(app_pg))
    limit = 64 << 10  # the artifact of this database is far larger

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    began = time.monotonic()
    completed = subprocess.run([sys.executable, "-m", "worker", "backup", "--no-upload"], env=env, cwd=tmp_path,
                               capture_output=True, text=True, preexec_fn=small_files, timeout=120)
    assert completed.returncode == 1 and time.monotonic() - began < 60
    reason = failed_event(completed.stderr)["reason"]
    backups = tmp_path / "backups"
    assert reason.startswith(f"compress failed writing {backups}/{app_pg}-") and ": File too large;" in reason
    assert "file size limit (ulimit -f)" in reason
    assert [p.name for p in backups.iterdir() if p.name.startswith(".tmp-") or p.name.endswith(".zst")] == []
