"""The deployment files in examples/ say what the docs say: their start commands reach the worker as meant."""

import json
from pathlib import Path
import py_compile
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

from tests.conftest import ROOT
from worker.child import split_command
from worker.cli import build_parser
from worker.config import load_config

EXAMPLES = ROOT / "examples"
UVICORN = ["uvicorn", "app:app", "--host", "0.0.0.0"]


def argv_through_a_shell(command: str, tmp_path: Path, env: dict[str, str]) -> list[str]:
    """Run `command` with bash, as Railpack's image does (`bash -c`), with a fake backup-worker that prints its
    arguments; return them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "backup-worker"
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    fake.chmod(0o755)
    shell_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env}
    done = subprocess.run(["bash", "-c", command], env=shell_env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def exec_argv(worker_args: list[str]) -> list[str]:
    args = build_parser().parse_args(worker_args)
    assert args.command == "run"
    return split_command(args.exec_command)


def test_the_sqlite_app_start_command_starts_uvicorn_on_railways_port(tmp_path: Path) -> None:
    start = tomllib.loads((EXAMPLES / "sqlite-app" / "railway.toml").read_text())["deploy"]["startCommand"]
    assert exec_argv(argv_through_a_shell(start, tmp_path, {"PORT": "8123"})) == [*UVICORN, "--port", "8123"]
    assert exec_argv(argv_through_a_shell(start, tmp_path, {})) == [*UVICORN, "--port", "8000"]
    procfile = (EXAMPLES / "sqlite-app" / "Procfile").read_text().split(":", 1)[1].strip()
    assert procfile == start


def readme_line(prefix: str) -> str:
    """Return the one line of the layout 1 how-to (docs/deploy-sqlite-app.md) that starts with `prefix`."""
    doc = ROOT / "docs" / "deploy-sqlite-app.md"
    found = [line.strip() for line in doc.read_text().splitlines() if line.strip().startswith(prefix)]
    assert len(found) == 1, f"{doc.name} has {len(found)} lines starting with {prefix!r}"
    return found[0]


def test_the_readmes_dockerfile_form_expands_port_in_a_shell_inside_exec(tmp_path: Path) -> None:
    # A Dockerfile deployment runs the start command in exec form: no outer shell expands anything.
    cmd = json.loads(readme_line("CMD [").removeprefix("CMD "))
    assert cmd[0] == "backup-worker"
    inner = exec_argv(cmd[1:])
    assert inner[:2] == ["sh", "-c"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "uvicorn").write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; print(\" \".join(sys.argv[1:]))' \"$@\"\n")
    (bin_dir / "uvicorn").chmod(0o755)
    done = subprocess.run(inner, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PORT": "8123"}, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["app:app", "--host", "0.0.0.0", "--port", "8123"]


def test_the_example_variables_are_a_valid_configuration() -> None:
    env = {"RAILWAY_VOLUME_MOUNT_PATH": "/app/data"}
    for line in (EXAMPLES / "sqlite-app" / "variables.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            env[name] = value
    config = load_config(env, cwd=Path("/app"))
    assert config.backup_dir == Path("/app/data/backups")
    assert [rule.describe() for rule in config.cleanup_rules] == ["/tmp/rose_audio/*.mp3=1d"]
    assert config.restore_on_start == "if-missing"  # a lost volume is restored before the app starts


def test_the_requirements_line_is_a_pip_requirement_once_the_owner_is_filled_in() -> None:
    lines = [line for line in (EXAMPLES / "sqlite-app" / "requirements.txt").read_text().splitlines()
             if line.startswith("backup-worker") or line.startswith("#   backup-worker")]
    for line in lines:
        requirement = Requirement(line.lstrip("# ").replace("<owner>", "example"))
        assert requirement.name == "backup-worker" and requirement.url.startswith(("git+https://", "https://"))
    assert len(lines) == 3


def test_the_example_app_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(EXAMPLES / "sqlite-app" / "app.py"), doraise=True, cfile=str(tmp_path / "app.pyc"))
