"""The "restore by hand" blocks of docs/recovery.md and docs/encryption.md (marked `<!-- by-hand: NAME -->`), run line
by line with the stock tools, as written, on real backups the worker made: a person restores without this project.
The files the blocks name are the worker's artifacts under the docs' example names; `~/.ssh/id_ed25519` is the test's
SSH key; `$TARGET_DATABASE_URL` a fresh database."""

import json
import os
from pathlib import Path
import re
import shutil
import sqlite3
import subprocess

from jobs import encryption
from tests.conftest import ROOT, run_worker
from tests.postgres.conftest import digests, make_db, url_for  # noqa: F401
from tests.redis.servers import everything, fill, load_into_fresh_server, redis_server

_BLOCK = re.compile(r"<!-- by-hand: (?P<name>[a-z0-9-]+) -->\s*```sh\n(?P<body>.*?)```", re.DOTALL)


def blocks() -> dict[str, list[str]]:
    """Return each by-hand block of the docs: its command lines (comments and blank lines left out)."""
    found: dict[str, list[str]] = {}
    for doc in ("recovery.md", "encryption.md"):
        for match in _BLOCK.finditer((ROOT / "docs" / doc).read_text()):
            found[match["name"]] = [line for line in match["body"].splitlines()
                                    if line.strip() and not line.strip().startswith("#")]
    return found


def follow(name: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    """Run block `name` line by line in `cwd` with bash, as a person's terminal does; return each line's stdout."""
    outputs = []
    for line in blocks()[name]:
        done = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True,
                              env={**os.environ, **(env or {})})
        assert done.returncode == 0, f"{name}: {line}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    return outputs


def backup(env: dict[str, str], cwd: Path, as_name: str) -> dict:
    """Take one backup; copy its artifact into `cwd` under the docs' name `as_name`; return its manifest."""
    done = run_worker(["backup", "--json"], env, cwd=cwd)
    assert done.code == 0, done.stderr
    artifact = Path(env["BACKUP_DIR"]) / json.loads(done.stdout)["artifact"]
    shutil.copy(artifact, cwd / as_name)
    return json.loads(artifact.with_name(artifact.name + ".json").read_text())


def test_every_by_hand_block_in_the_docs_has_a_test() -> None:
    assert set(blocks()) == {"sqlite", "postgres-redis", "encrypted"}


def test_sqlite_by_hand(tmp_path: Path, worker_env) -> None:
    manifest = backup(worker_env, tmp_path, "app-20261122T020000Z.sqlite.zst")
    _, digest, check = follow("sqlite", tmp_path)
    assert digest.split()[0] == manifest["sha256"] and check.strip() == "ok"
    with sqlite3.connect(tmp_path / "restored.db") as connection:
        assert connection.execute("SELECT count(*) FROM messages").fetchone()[0] == 1000


def test_postgres_and_redis_by_hand(tmp_path: Path, worker_env, make_db) -> None:
    shop = make_db("byhand", populated=True, events=300)
    base = {key: value for key, value in worker_env.items() if key != "BACKUP_SOURCE"}
    backup({**base, "DATABASE_URL": url_for(shop)}, tmp_path, "shop-20261122T020000Z.pgdump.zst")
    with redis_server(tmp_path / "cache") as server:
        fill(server)
        expected = everything(server)
        backup({**base, "BACKUP_SOURCE": server.url()}, tmp_path, "cache-20261122T020000Z.rdb.zst")
    target = make_db("byhand_target")
    follow("postgres-redis", tmp_path, {"TARGET_DATABASE_URL": url_for(target)})
    assert digests(target) == digests(shop)
    with load_into_fresh_server(tmp_path / "dump.rdb", tmp_path / "loaded") as loaded:
        assert everything(loaded) == expected


def test_encrypted_by_hand(tmp_path: Path, worker_env, make_db) -> None:
    secret, recipient = encryption.new_identity()
    (tmp_path / "backup-key.txt").write_text(secret + "\n")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / ".ssh" / "id_ed25519")], check=True)
    ssh_recipient = (home / ".ssh" / "id_ed25519.pub").read_text().strip()
    backup({**worker_env, "BACKUP_ENCRYPTION_RECIPIENTS": recipient}, tmp_path,
           "app-20261122T020000Z.sqlite.zst.age")
    shop = make_db("byhand_sealed", populated=True, events=300)
    base = {key: value for key, value in worker_env.items() if key != "BACKUP_SOURCE"}
    backup({**base, "DATABASE_URL": url_for(shop), "BACKUP_ENCRYPTION_RECIPIENTS": f"{recipient},{ssh_recipient}"},
           tmp_path, "shop-20261122T020000Z.pgdump.zst.age")
    follow("encrypted", tmp_path, {"HOME": str(home)})
    with sqlite3.connect(tmp_path / "app.db") as connection:
        assert connection.execute("SELECT count(*) FROM messages").fetchone()[0] == 1000
    target = make_db("byhand_sealed_target")
    subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "-d", url_for(target), str(tmp_path / "shop.pgdump")],
                   check=True, capture_output=True)
    assert digests(target) == digests(shop)
