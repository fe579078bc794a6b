"""Two services sharing one backup directory: each sees, chooses, counts and deletes only its own backup set."""

import json
import os
from pathlib import Path
import pty
import signal
import sqlite3
import subprocess
import sys
import time

from tests.conftest import ROOT, make_app_db


def count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def two_sets(tmp_path: Path, worker) -> Path:
    """Back up app.db (1000 rows), then staging.db (5 rows), newer, into the same BACKUP_DIR; return staging.db."""
    assert worker("backup", "--no-upload").code == 0
    time.sleep(1.1)  # staging's backup is strictly newer
    staging = make_app_db(tmp_path / "staging.db", rows=5)
    result = worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{staging}"})
    assert result.code == 0, result.stderr
    return staging


def test_restore_latest_over_app_db_ignores_staging_dbs_newer_backup(tmp_path: Path, app_db: Path, worker) -> None:
    two_sets(tmp_path, worker)
    with sqlite3.connect(app_db) as connection:
        connection.execute("DELETE FROM messages WHERE id > 10")
    result = worker("restore", "--latest", "--yes")
    assert result.code == 0, result.stderr
    assert result.event("job.succeeded")["backup"].startswith("app-")
    assert count(app_db) == 1000


def test_list_shows_only_the_configured_set_unless_all(tmp_path: Path, worker) -> None:
    two_sets(tmp_path, worker)
    ours = json.loads(worker("list", "--json").stdout)
    everything = json.loads(worker("list", "--json", "--all").stdout)
    assert [row["artifact"].split("-")[0] for row in ours] == ["app"]
    assert sorted(row["artifact"].split("-")[0] for row in everything) == ["app", "staging"]
    named = json.loads(worker("list", "--json", env={"BACKUP_SOURCE": "", "BACKUP_NAME": "staging"}).stdout)
    assert [row["artifact"].split("-")[0] for row in named] == ["staging"]


def test_status_and_prune_count_only_the_configured_set(tmp_path: Path, worker) -> None:
    two_sets(tmp_path, worker)
    report = json.loads(worker("status", "--json").stdout)
    assert report["newest_backup"].startswith("app-") and report["backups"] == 1
    policy = {"BACKUP_RETENTION_DAYS": "0", "BACKUP_KEEP_MIN": "1"}
    assert worker("backup", "--no-upload", env=policy).code == 0
    pruned = worker("prune", env=policy)
    assert pruned.code == 0, pruned.stderr
    left = sorted(p.name.split("-")[0] for p in (tmp_path / "backups").glob("*.sqlite.zst"))
    assert left == ["app", "staging"]  # app's older one went; staging's only backup was never even considered


def test_backup_name_names_the_set_and_prune_without_a_set_refuses(tmp_path: Path, worker) -> None:
    result = worker("backup", "--no-upload", env={"BACKUP_NAME": "billing"})
    assert result.code == 0 and result.event("job.succeeded")["artifact"].startswith("billing-")
    refused = worker("prune", env={"BACKUP_SOURCE": ""})
    assert refused.code == 2 and "BACKUP_NAME" in refused.stderr


def test_verify_and_restore_take_source_to_choose_a_set(tmp_path: Path, worker) -> None:
    two_sets(tmp_path, worker)
    verified = worker("verify", "--latest", "--source", "staging")
    assert verified.code == 0 and verified.event("job.succeeded")["backup"].startswith("staging-")
    target = tmp_path / "copy.db"
    restored = worker("restore", "--latest", "--source", "staging", "--to", str(target))
    assert restored.code == 0, restored.stderr
    assert count(target) == 5
    unknown = worker("verify", "--latest", "--source", "billing")
    assert unknown.code == 2 and "billing" in unknown.stderr and "staging (sqlite)" in unknown.stderr
    over_live = worker("restore", "--latest", "--source", "staging", "--yes")
    assert over_live.code == 2 and "--to PATH" in over_live.stderr


def test_an_empty_volume_with_several_sets_must_be_told_which(tmp_path: Path, worker) -> None:
    two_sets(tmp_path, worker)
    bare = {"BACKUP_SOURCE": ""}
    target = tmp_path / "restored.db"
    refused = worker("restore", "--latest", "--to", str(target), env=bare)
    assert refused.code == 2 and not target.exists()
    assert "app (sqlite)" in refused.stderr and "staging (sqlite)" in refused.stderr and "BACKUP_NAME" in refused.stderr
    chosen = worker("restore", "--latest", "--to", str(target), env={**bare, "BACKUP_NAME": "staging"})
    assert chosen.code == 0, chosen.stderr
    assert count(target) == 5


def test_a_manifest_whose_id_is_not_its_artifacts_is_not_a_backup_and_writes_nothing_outside(tmp_path: Path, worker) -> None:
    result = worker("backup", "--no-upload")
    artifact = result.event("job.succeeded")["artifact"]
    manifest_path = tmp_path / "backups" / (artifact + ".json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["id"] == artifact.removesuffix(".zst")
    manifest["id"] = "../outside/planted"
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "outside").mkdir()

    listed = worker("list", "--json")
    assert json.loads(listed.stdout) == []
    assert "is not" in listed.event("list.skipped_file")["problem"]
    for args in (["verify", artifact], ["verify", "--latest"], ["restore", artifact, "--to", str(tmp_path / "x.db")]):
        refused = worker(*args)
        assert refused.code == 1, args
        assert "is not" in refused.event("selection.skipped_file")["problem"]
    assert list((tmp_path / "outside").iterdir()) == [] and not (tmp_path / "x.db").exists()


def test_a_version_1_manifest_id_is_still_a_backup(tmp_path: Path, worker) -> None:
    artifact = worker("backup", "--no-upload").event("job.succeeded")["artifact"]
    manifest_path = tmp_path / "backups" / (artifact + ".json")
    manifest = json.loads(manifest_path.read_text())
    manifest["id"] = artifact.removesuffix(".sqlite.zst")
    manifest_path.write_text(json.dumps(manifest))
    assert worker("verify", artifact.removesuffix(".sqlite.zst")).code == 0
    assert worker("verify", "--latest").code == 0


def test_catch_up_looks_at_the_configured_set_only(tmp_path: Path, worker, worker_env) -> None:
    sys.path.insert(0, str(ROOT))
    from datetime import datetime, timezone

    from worker.context import Context
    from worker.config import load_config
    from worker.service import needs_catch_up

    staging = make_app_db(tmp_path / "staging.db", rows=5)
    assert worker("backup", "--no-upload", env={"BACKUP_SOURCE": f"sqlite:///{staging}"}).code == 0
    ctx = Context(config=load_config(worker_env, cwd=tmp_path), cwd=tmp_path)
    catch_up, why = needs_catch_up(ctx, datetime.now(timezone.utc))
    assert catch_up and "no verified backup" in why
    assert worker("backup", "--no-upload").code == 0
    assert needs_catch_up(ctx, datetime.now(timezone.utc))[0] is False


def test_one_shot_commands_print_results_on_stdout_and_logs_on_stderr(worker) -> None:
    result = worker("backup", "--no-upload", "--json")
    assert result.code == 0, result.stderr
    document = json.loads(result.stdout)  # stdout is the result alone: `backup --json | jq` works
    assert document["outcome"] == "succeeded" and document["artifact"].endswith(".sqlite.zst")
    assert document["size"] > 0 and document["backup"] == document["artifact"].removesuffix(".zst")
    assert {json.loads(line)["event"] for line in result.stderr.splitlines()} >= {"job.started", "job.succeeded"}
    plain = worker("verify", "--latest")
    assert plain.code == 0 and not any(line.startswith("{") for line in plain.stdout.splitlines())
    assert "is sound" in plain.stdout


def test_the_prompt_names_the_backup_and_the_target_and_ctrl_c_cancels_it(tmp_path: Path, app_db: Path, worker_env) -> None:
    from tests.conftest import run_worker

    assert run_worker(["backup", "--no-upload"], worker_env, cwd=tmp_path).code == 0
    before = app_db.read_bytes()
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "worker", "restore", "--latest"], env=worker_env, cwd=tmp_path,
                               stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(terminal)
    try:
        prompt = ""
        deadline = time.monotonic() + 60
        while "Type yes" not in prompt:
            assert time.monotonic() < deadline and process.poll() is None, prompt
            prompt += os.read(process.stderr.fileno(), 4096).decode()
        assert str(app_db) in prompt and "app-" in prompt and ".sqlite (created " in prompt and " ago, " in prompt
        process.send_signal(signal.SIGINT)
        assert process.wait(20) == 2
        rest = process.stderr.read()
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    assert "restore cancelled; nothing was changed" in rest and "Traceback" not in rest
    assert app_db.read_bytes() == before


def test_an_existing_app_directory_keeps_its_mode_and_a_new_one_is_private(tmp_path: Path, worker) -> None:
    shared = tmp_path / "appdata"
    shared.mkdir()
    shared.chmod(0o755)
    result = worker("backup", "--no-upload", env={"BACKUP_DIR": str(shared)})
    assert result.code == 0, result.stderr
    assert shared.stat().st_mode & 0o777 == 0o755
    assert result.event("backup_dir.open_mode")["level"] == "warning"
    fresh = tmp_path / "fresh" / "backups"
    assert worker("backup", "--no-upload", env={"BACKUP_DIR": str(fresh)}).code == 0
    assert fresh.stat().st_mode & 0o777 == 0o700
