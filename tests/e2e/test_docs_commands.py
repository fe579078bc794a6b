"""Every code block in README.md and docs/*.md that runs a worker command (`./dev …`, `backup-worker …`,
`python -m worker …`) is exercised, so a renamed verb or flag, or a command that stopped working as written, fails
here instead of in a user's terminal.

Each block runs in a fresh "container" (a temporary directory holding `app/data/app.db`, a small SQLite app
database, with one backup already taken, and `/app/data`, `/tmp/` in the commands mapped into it), with the
variables the block itself sets (`NAME=value` lines). A command that only needs that database is run as
`python -m worker …` and must exit 0; `./dev COMMAND` is run the way `./dev` runs it (the demo source
`sqlite:///data/app.db` relative to the repository, here the container). Commands that need Railway, a bucket, a
PostgreSQL or Redis server or a long-running `run` are parsed with the worker's own argument parser
(`worker.cli.build_parser`). The recovery recipes (`<!-- recipe: NAME -->` blocks) are left to
tests/e2e/test_recovery_recipes.py, which runs them against real servers."""

from dataclasses import dataclass
import json
import os
from pathlib import Path
import re
import shlex

import pytest

from tests.conftest import ROOT, make_app_db, run_worker
from worker.cli import build_parser

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n(?P<body>.*?)^(?P=indent)```", re.DOTALL | re.MULTILINE)
_RECIPE = re.compile(r"<!-- recipe: [a-z0-9-]+ -->\s*$")
# A worker command word at the start of a command: the line's start, after whitespace, a quote or `[`; never a
# host name such as backup-worker.railway.internal, nor the service of `railway ssh --service backup-worker`.
_COMMAND = re.compile(r"""(?:(?<=^)|(?<=[\s"'`\[]))(?P<word>\./dev|backup-worker|python3? -m worker)(?=[\s"']|$)""")
_ASSIGNMENT = re.compile(r"^[A-Z][A-Z0-9_]*=")
_CLEARED = ("BACKUP_", "S3_", "CLEANUP_", "AWS_", "CATALOG_", "LOG_", "DATABASE_URL", "FRESHNESS_", "RAILWAY_",
            "RESTORE_", "RETENTION_RULES", "NOTIFY_", "HEALTH", "PG")
# What a command may not need to be run here: a bucket, another server or set, the long-running scheduler.
_PARSE_ONLY_FLAGS = {"--from-s3", "--remote", "--target-url", "--source"}
_DEV_ONLY = {"test"}  # ./dev verbs that are the script's own, not the worker's


@dataclass
class Command:
    doc: str
    line: str
    via_dev: bool
    args: list[str]
    railway: bool


@dataclass
class Block:
    doc: str
    lang: str
    env: dict[str, str]
    commands: list[Command]

    def id(self) -> str:
        return f"{self.doc}: {self.commands[0].line.strip()[:60]}"


def _words(text: str) -> list[str]:
    """Split a command line like a shell; a quote the line's own wrapping left unbalanced (a TOML string) is cut."""
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return shlex.split(text.rstrip()[:-1], comments=True)


def command_of(doc: str, line: str) -> Command | None:
    """Return the worker command a code line runs, or None when it runs none."""
    stripped = line.strip()
    if stripped.startswith("CMD ["):  # a Dockerfile's exec form
        argv = json.loads(stripped.removeprefix("CMD "))
        return Command(doc, line, False, argv[1:], False) if argv[0] == "backup-worker" else None
    matches = [match for match in _COMMAND.finditer(line) if not line[:match.start()].endswith("--service ")]
    if not matches:
        return None
    match = matches[-1]
    rest = _words(line[match.end():])
    if rest[:1] == ["@"]:  # a pip requirement naming the package, not a command
        return None
    return Command(doc, line, match["word"] == "./dev", rest, "railway " in line[:match.start()])


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in _FENCE.finditer(text):
            if _RECIPE.search(text[:match.start()]):
                continue  # run step by step by tests/e2e/test_recovery_recipes.py
            doc = str(path.relative_to(ROOT))
            env: dict[str, str] = {}
            commands = []
            for line in match["body"].splitlines():
                if _ASSIGNMENT.match(line.strip()):
                    name, _, value = _words(line.strip())[0].partition("=")
                    env[name] = value
                elif (command := command_of(doc, line)) is not None:
                    commands.append(command)
            if commands:
                found.append(Block(doc, match["lang"], env, commands))
    return found


def test_the_docs_have_worker_commands_and_every_doc_block_is_found() -> None:
    found = blocks()
    docs = {block.doc for block in found}
    assert "README.md" in docs and len(found) >= 8, docs
    assert any(command.via_dev for block in found for command in block.commands)
    # the recipes are left out, and only they
    recipes = sum(1 for path in DOCS for _ in re.finditer(r"<!-- recipe: ", path.read_text()))
    assert recipes >= 5


def test_a_command_line_is_told_from_prose_host_names_and_requirements() -> None:
    ssh = "railway ssh --service backup-worker -- backup-worker list --remote"
    assert command_of("x", ssh).args == ["list", "--remote"]
    assert command_of("x", "redis-cli -h redis REPLICAOF backup-worker.railway.internal 6390") is None
    assert command_of("x", "backup-worker @ git+https://github.com/o/backup-worker@v0.1.0") is None
    toml = """startCommand = 'backup-worker run --exec "uvicorn app:app --port ${PORT:-8000}"'"""
    assert command_of("x", toml).args == ["run", "--exec", "uvicorn app:app --port ${PORT:-8000}"]
    dev = "./dev restore --latest --to /tmp/x.db   # a copy"
    assert command_of("x", dev).args == ["restore", "--latest", "--to", "/tmp/x.db"]


def test_the_parser_check_fails_on_a_renamed_flag() -> None:
    with pytest.raises(SystemExit):
        parse(Command("x", "backup-worker restore --newest", False, ["restore", "--newest"], False))


def parse(command: Command) -> None:
    if command.via_dev and command.args[:1] and command.args[0] in _DEV_ONLY:
        assert re.search(rf"^\s*{re.escape(command.args[0])}\)", (ROOT / "dev").read_text(), re.MULTILINE), command.line
        return
    build_parser().parse_args(command.args)


def runnable(command: Command) -> bool:
    return (not command.railway and command.args[:1] != ["run"] and not _PARSE_ONLY_FLAGS & set(command.args)
            and not (command.via_dev and command.args[:1] and command.args[0] in _DEV_ONLY))


def container_env(container: Path, block: Block, via_dev: bool) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(_CLEARED)}
    env["PYTHONPATH"] = str(ROOT)
    if via_dev:  # ./dev's demo source, relative to the repository (the container here)
        env["BACKUP_SOURCE"] = "sqlite:///data/app.db"
    else:  # as on Railway: the app's volume at /app/data, backups on it
        env.update(BACKUP_SOURCE=f"sqlite:///{container}/app/data/app.db",
                   RAILWAY_VOLUME_MOUNT_PATH=str(container / "app" / "data"))
    env.update({name: mapped(value, container) for name, value in block.env.items()})
    return env


def mapped(text: str, container: Path) -> str:
    """Move the container paths a command names (/app/data, /tmp/) into the test's container."""
    return re.sub(r"(?<![\w.-])(/app/data|/tmp/)", lambda found: f"{container}{found[1]}", text)


@pytest.mark.parametrize("block", blocks(), ids=Block.id)
def test_each_worker_command_in_the_docs_runs_or_parses(block: Block, tmp_path: Path) -> None:
    for command in block.commands:
        parse(command)  # every command, run or not, must be one the worker's parser takes
    to_run = [command for command in block.commands if runnable(command)]
    if not to_run:
        return
    (tmp_path / "app" / "data").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    make_app_db(tmp_path / "app" / "data" / "app.db", rows=200)
    (tmp_path / "data").symlink_to(tmp_path / "app" / "data")  # ./dev's data/app.db is the same database
    seeded = set()
    for command in to_run:
        env = container_env(tmp_path, block, command.via_dev)
        if command.via_dev not in seeded:  # one backup already there, as on a service that has been running
            seed = run_worker(["backup"], env, cwd=tmp_path)
            assert seed.code == 0, seed.stderr
            seeded.add(command.via_dev)
        args = [mapped(arg, tmp_path) for arg in command.args]
        result = run_worker(args, env, cwd=tmp_path)
        assert result.code == 0, \
            f"{command.doc}: `{command.line.strip()}` exited {result.code}\n{result.stdout}\n{result.stderr}"
