"""One suite for every engine (sqlite, pgdump, rdb), as tests/s3/test_destination_suite.py is for every destination:
each engine conforms to the protocols of jobs.engines, its backup round-trips through the pipeline and its
restore route, its check rejects damage, a stop request ends its snapshot and its check within 2 s, and its
restore refuses what it must. Each case runs against a real database: a SQLite file, a database on the suite's
PostgreSQL server, a private redis-server."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
import sqlite3
import subprocess
import threading
import time
from types import ModuleType

import pytest

from jobs import engines, pipeline, retention
from jobs import restore as restoring
from jobs.backups import Backup, list_backups
from jobs.destinations.local import LocalDestination
from jobs.engines import Check, Source, postgres, redis, sqlite
from jobs.errors import Cancelled, IntegrityError, SourceError
from tests.pipes import pipe
from tests.postgres.conftest import digests, url_for
from tests.redis.servers import everything, fill, load_into_fresh_server, redis_server

KINDS = ("sqlite", "pgdump", "rdb")


@dataclass
class Case:
    """One engine under test: its module, a live source holding data, and how to read that data back from a
    restored copy (a file for sqlite and rdb, a database name for pgdump)."""

    module: ModuleType
    source: Source
    contents: Callable[[], object]  # the live source's data, to compare with a restored copy
    restored: Callable[[Path], object]  # the data of a raw snapshot restored where the engine restores it
    make_target: Callable[[], Source] | None  # a fresh database to restore into, for engines with URL_TARGET


def _sqlite_rows(path: Path) -> object:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT id, note FROM notes ORDER BY id").fetchall()


@pytest.fixture(params=KINDS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            database = tmp_path / "app.db"
            with sqlite3.connect(database) as connection:
                connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, note TEXT)")
                connection.executemany("INSERT INTO notes (note) VALUES (?)", [(f"note {n}",) for n in range(500)])
            module = sqlite
            source = module.open_source(f"sqlite:///{database}", tmp_path)
            yield Case(module, source, lambda: _sqlite_rows(database), _sqlite_rows, None)
        elif request.param == "pgdump":
            create_db = request.getfixturevalue("make_db")
            app = create_db("suite", populated=True, events=2000)
            module = postgres
            fresh: list[str] = []

            def make_target() -> Source:
                fresh.append(create_db("suite_target"))
                return module.open_source(url_for(fresh[-1]), tmp_path)

            yield Case(module, module.open_source(url_for(app), tmp_path), lambda: digests(app),
                       lambda _: digests(fresh[-1]), make_target)
        else:
            server = stack.enter_context(redis_server(tmp_path / "redis"))
            fill(server)
            module = redis

            def loaded(raw: Path) -> object:
                with load_into_fresh_server(raw, tmp_path / f"loaded-{time.monotonic_ns()}") as copy:
                    return everything(copy)

            yield Case(module, module.open_source(server.url(), tmp_path), lambda: everything(server), loaded, None)


def _backup(case: Case, backups: Path) -> tuple[Backup, Path]:
    """Take one backup of the case's source through the pipeline; return it and its artifact."""
    settings = pipeline.BackupSettings(backups, 3, retention.Policy(7, 3))
    pipeline.take_backup(case.source, settings, threading.Event())
    destination = LocalDestination(backups)
    (backup,), _ = list_backups(destination)
    return backup, destination.path(backup.artifact)


def test_the_engine_module_and_its_classes_declare_every_member_of_the_protocols(case: Case) -> None:
    assert engines.conformance(case.module, *case.module.CONFORMANCE) == []
    assert isinstance(case.source, Source)
    assert case.module in engines.engines() and case.source.kind == case.module.KIND


def _url_of(case: Case) -> str:
    return {"sqlite": lambda s: f"sqlite:///{s.path}", "pgdump": lambda s: url_for(s.conn.dbname),
            "rdb": lambda s: s.url}[case.source.kind](case.source)


def test_a_source_opened_with_a_set_name_is_named_by_it(case: Case) -> None:
    assert case.module.open_source(_url_of(case), Path.cwd(), "billing").name() == "billing"
    assert case.module.open_source(_url_of(case), Path.cwd()).name() == case.source.name()


def test_a_backup_round_trips_through_the_check_and_the_engine_s_restore_route(case: Case, tmp_path: Path) -> None:
    before = case.contents()
    backup, artifact = _backup(case, tmp_path / "backups")
    assert backup.kind == case.module.KIND and backup.manifest["verified"]
    checks = restoring.check_artifact(artifact, backup, tmp_path, threading.Event())
    assert checks[:3] == ["size", "sha256", "zstd frame checksum"]
    if case.make_target is not None:  # restored into a fresh database through Source.restore, as --target-url does
        target = case.make_target()
        restoring.restore_over(artifact, backup, target, tmp_path, threading.Event())
        assert case.restored(tmp_path) == before
    else:  # restored to a new file, as --to does, and read by the stock program
        out = tmp_path / "restored.raw"
        restoring.restore_to_file(artifact, backup, out, threading.Event())
        assert case.restored(out) == before
    assert case.contents() == before  # the source is untouched


@pytest.mark.parametrize("damage", ["header", "truncated", "flipped tail"])
def test_the_engine_s_check_rejects_a_damaged_raw_stream(case: Case, tmp_path: Path, damage: str) -> None:
    backup, artifact = _backup(case, tmp_path / "backups")
    raw = tmp_path / "raw"
    restoring.restore_to_file(artifact, backup, raw, threading.Event())
    data = raw.read_bytes()
    damaged = {"header": b"\0" * 16 + data[16:], "truncated": data[: len(data) // 2],
               "flipped tail": data[:-1] + bytes([data[-1] ^ 0xFF])}[damage]
    if damage == "flipped tail" and case.source.kind == "sqlite":
        damaged = data[:-4096] + bytes(4096)  # a page of zeros where a table's rows were: the b-tree breaks
    workdir = tmp_path / "check"
    workdir.mkdir()
    with pytest.raises(IntegrityError), engines.checker(backup.kind, workdir, threading.Event()) as check:
        assert isinstance(check, Check)
        for start in range(0, len(damaged), 1 << 16):
            check.feed(damaged[start:start + (1 << 16)])
        check.finish()


def test_a_stop_request_ends_the_snapshot_within_two_seconds_and_leaves_nothing(case: Case, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        with case.source.snapshot(workdir, cancel) as snap:
            try:
                while chunk := snap.stream.read(1 << 16):
                    snap.check.feed(chunk)
                snap.check.finish()
            finally:
                snap.check.close()
    assert time.monotonic() - started < 2
    assert list(workdir.iterdir()) == []


def test_a_stop_request_ends_the_check_of_an_artifact_within_two_seconds(case: Case, tmp_path: Path) -> None:
    backup, artifact = _backup(case, tmp_path / "backups")
    raw = tmp_path / "raw"
    restoring.restore_to_file(artifact, backup, raw, threading.Event())
    data = raw.read_bytes()
    workdir = tmp_path / "check"
    workdir.mkdir()
    cancel = threading.Event()
    started = time.monotonic()
    with pytest.raises(Cancelled), engines.checker(backup.kind, workdir, cancel) as check:
        check.feed(data[: len(data) // 2])
        cancel.set()
        check.feed(data[len(data) // 2:])
        check.finish()
    assert time.monotonic() - started < 2


def test_a_restore_refuses_another_kind_a_damaged_artifact_and_what_the_engine_does_not_restore(case: Case, tmp_path: Path) -> None:
    before = case.contents()
    backup, artifact = _backup(case, tmp_path / "backups")
    refusal = case.source.restore_refusal()
    assert (refusal is not None) == (case.source.kind == "rdb")  # the worker loads no dataset into a live Redis
    if refusal is not None:
        with pytest.raises(SourceError) as caught:
            restoring.restore_over(artifact, backup, case.source, tmp_path, threading.Event())
        assert str(caught.value) == refusal and "restore --to PATH" in refusal
    other = next(kind for kind in KINDS if kind != case.source.kind)
    foreign = replace(backup, artifact=backup.artifact.replace(f".{case.source.kind}.", f".{other}."))
    assert foreign.kind == other
    with pytest.raises(SourceError, match=f"kind {other}"):
        restoring.restore_over(artifact, foreign, case.source, tmp_path, threading.Event())
    damaged = tmp_path / "damaged.zst"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256"):
        restoring.restore_over(damaged, backup, case.source, tmp_path, threading.Event())
    assert case.contents() == before  # nothing reached the live data


@pytest.fixture(params=["x25519", "x25519+ssh-ed25519"])
def keys(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[list, list, Path]:
    """Recipients to encrypt to, the identities that open them, and an age identity file for the stock CLI."""
    from jobs import encryption

    secret, public = encryption.new_identity()
    key_file = tmp_path / "key.txt"
    key_file.write_text(secret + "\n")
    texts = [public]
    if "ssh" in request.param:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id_ed25519")], check=True)
        texts.append((tmp_path / "id_ed25519.pub").read_text().strip())
    identities = encryption.load_identities(None, key_file)
    if "ssh" in request.param:  # the break-glass key opens it alone
        identities_ssh = encryption.load_identities(None, tmp_path / "id_ed25519")
        assert identities_ssh
        identities = identities_ssh
    return encryption.parse_recipients(",".join(texts)), identities, key_file


def test_an_encrypted_backup_round_trips_and_the_stock_age_cli_opens_it(case: Case, keys, tmp_path: Path) -> None:

    from jobs.errors import NoIdentity

    recipients, identities, key_file = keys
    before = case.contents()
    backups = tmp_path / "backups"
    settings = pipeline.BackupSettings(backups, 3, retention.Policy(7, 3), recipients=tuple(recipients))
    pipeline.take_backup(case.source, settings, threading.Event())
    (backup,), _ = list_backups(LocalDestination(backups))
    artifact = LocalDestination(backups).path(backup.artifact)
    assert backup.artifact.endswith(".zst.age") and backup.id == backup.artifact.removesuffix(".zst.age")
    assert backup.manifest["encryption"] == {"format": "age", "recipients": [r.fingerprint for r in recipients]}
    assert artifact.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert restoring.check_artifact(artifact, backup, tmp_path, threading.Event()) == ["size", "sha256"]
    with pytest.raises(NoIdentity, match="BACKUP_ENCRYPTION_IDENTITY"):
        restoring.restore_to_file(artifact, backup, tmp_path / "none.raw", threading.Event())
    checks = restoring.check_artifact(artifact, backup, tmp_path, threading.Event(), identities)
    assert checks[:4] == ["size", "sha256", "age authentication", "zstd frame checksum"]
    out = tmp_path / "restored.raw"
    restoring.restore_to_file(artifact, backup, out, threading.Event(), identities)
    by_hand = pipe(["age", "-d", "-i", str(key_file), str(artifact)], ["zstd", "-d", "-q"])
    assert by_hand == out.read_bytes()  # a person restores it without our code
    if case.make_target is not None:
        restoring.restore_over(artifact, backup, case.make_target(), tmp_path, threading.Event(), identities=identities)
        assert case.restored(tmp_path) == before
    else:
        assert case.restored(out) == before
    damaged = tmp_path / "damaged.age"  # altered ciphertext with a manifest to match: age's authentication refuses it
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    import hashlib

    forged = replace(backup, sha256=hashlib.sha256(bytes(data)).hexdigest())
    with pytest.raises(IntegrityError):
        restoring.check_artifact(damaged, forged, tmp_path, threading.Event(), identities)
