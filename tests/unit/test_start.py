"""The entry point: the CLI's exit code passes through, and the garbage collector is on while a command runs
(the long-running `run` must collect), with what the imports made frozen out of its sight."""

import os
from pathlib import Path
import subprocess
import sys
import textwrap

ROOT = Path(__file__).resolve().parents[2]


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BACKUP_", "DATABASE_URL"))}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=60)


def test_the_collector_is_on_during_the_command_and_the_imports_are_frozen() -> None:
    done = run_python("""
        import gc
        import worker.cli

        seen = {}

        def command(argv):
            seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count(), argv=argv)
            return 7

        worker.cli.main = command
        from worker.start import main

        code = main(["status"])
        print(code, seen["enabled"], seen["frozen"] > 1000, seen["argv"], gc.isenabled())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["7", "True", "True", "['status']", "True"]


def test_python_dash_m_worker_returns_the_cli_exit_code(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "worker", "--version"], cwd=ROOT, text=True, capture_output=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    usage = subprocess.run([sys.executable, "-m", "worker", "no-such-command"], cwd=ROOT, text=True, capture_output=True,
                           timeout=60)
    assert usage.returncode == 2
    assert "no-such-command" in usage.stderr


def test_a_backup_without_a_bucket_does_not_load_boto3(tmp_path: Path) -> None:
    """boto3 and botocore are a fifth of the worker's start-up: loaded only when S3_BUCKET is set."""
    import sqlite3

    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE t (x)")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("BACKUP_", "DATABASE_URL", "S3_"))}
    env.update(BACKUP_SOURCE=f"sqlite:///{tmp_path / 'app.db'}", BACKUP_DIR=str(tmp_path / "backups"))
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom worker.start import main\ncode = main(['backup'])\n"
                           "print(code, sorted(name for name in ('boto3', 'botocore') if name in sys.modules))"],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []"
