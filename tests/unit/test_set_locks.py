"""Locks per backup set (worker/lock.py) and what a set's cycle may sweep (jobs: set_of_temporary, remove_stale),
with tables of cases. flock conflicts between two opens of one file even inside one process, so one test process
plays both runs."""

import os
from pathlib import Path
import subprocess
import sys

import pytest

from jobs import pipeline
from jobs.artifacts import set_of_temporary, snapshot_dir_prefix, temp_prefix
from jobs.destinations.local import LocalDestination
from jobs.errors import BusyError
from worker.lock import for_set, for_sets, free_sets, set_lock_name


@pytest.mark.parametrize("set_name, lock", [("app", "backup-app"), ("app-staging", "backup-app-staging"), ("my_db", "backup-my_db")])
def test_each_set_has_its_own_lock_file(tmp_path: Path, set_name: str, lock: str) -> None:
    assert set_lock_name(set_name) == lock
    with for_set(tmp_path, set_name):
        assert (tmp_path / f".{lock}.lock").read_text() == f"{os.getpid()} backup"


@pytest.mark.parametrize(
    "held, wanted, busy",
    [
        ("app", "app", True),  # the same set: exclusive
        ("app", "cache", False),  # another set in the same directory: never waits
        ("app", "app-staging", False),  # a name that starts like another set's is another set
        ("app-staging", "app", False),
        ("cache", "app", False),
    ],
)
def test_only_the_same_set_is_exclusive(tmp_path: Path, held: str, wanted: str, busy: bool) -> None:
    with for_set(tmp_path, held, "backup"):
        if busy:
            with pytest.raises(BusyError) as raised:
                with for_set(tmp_path, wanted):
                    pass
            assert str(raised.value) == (f"another backup is running for the set {wanted} (pid {os.getpid()}, backup); "
                                         "wait for it to finish")
            assert raised.value.stage == "lock"
        else:
            with for_set(tmp_path, wanted):
                pass


@pytest.mark.parametrize("doing", ["backup", "prune", "pre-restore safety backup", "start-up cleanup"])
def test_the_busy_message_names_the_holder_and_what_it_does(tmp_path: Path, doing: str) -> None:
    with for_set(tmp_path, "app", doing), pytest.raises(BusyError, match=rf"\(pid {os.getpid()}, {doing}\)"):
        with for_set(tmp_path, "app"):
            pass


def test_the_lock_is_free_again_when_the_holder_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from worker.lock import for_set\n"
                               f"with for_set(Path({str(tmp_path)!r}), 'app'):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError, match=f"pid {holder.pid}, backup"):
            with for_set(tmp_path, "app"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with for_set(tmp_path, "app"):
        pass


@pytest.mark.parametrize("held, asked, taken", [((), ("a", "b"), ["a", "b"]), (("a",), ("a", "b"), ["b"]),
                                                (("a", "b"), ("a", "b"), []), ((), ("a", "a"), ["a"])])
def test_free_sets_takes_the_free_ones_and_passes_over_the_busy(tmp_path: Path, held: tuple, asked: tuple, taken: list) -> None:
    with for_sets(tmp_path, held, "backup"), free_sets(tmp_path, asked, "start-up cleanup") as got:
        assert got == taken


def test_for_sets_takes_all_or_none(tmp_path: Path) -> None:
    with for_set(tmp_path, "b"):
        with pytest.raises(BusyError, match="for the set b"):
            with for_sets(tmp_path, ["a", "b"], "prune"):
                pass
        with for_set(tmp_path, "a"):  # a was let go again when b was busy
            pass


# --- which set a temporary belongs to, and what a set's cycle sweeps ------------------------------------------

@pytest.mark.parametrize(
    "name, owner",
    [
        (".tmp-12-0badcafe-app-20261122T020000Z.sqlite.zst", "app"),
        (".tmp-12-0badcafe-app-20261122T020000Z.sqlite.zst.json", "app"),
        (".tmp-12-my-app-20261122T020000Z.pgdump.zst", "my-app"),  # version 1 names had no token
        (".tmp-12-0badcafe-snapshot.my-app.k2j3h4_x", "my-app"),
        (".tmp-12-0badcafe-snapshot.app-2.abc", "app-2"),
        (".tmp-12-0badcafe-snapshot-k2j3h4", None),  # a scratch directory of an older version: no set
        (".tmp-12-0badcafe-probe", None),
        (".tmp-12-0badcafe-restore-k2j3", None),
        (".tmp-12-0badcafe-app.db", None),
        ("app-20261122T020000Z.sqlite.zst", None),  # not a temporary at all
    ],
)
def test_a_temporary_belongs_to_the_set_its_name_says(name: str, owner: str | None) -> None:
    assert set_of_temporary(name) == owner


def test_a_snapshot_directory_is_named_for_its_set() -> None:
    assert set_of_temporary(snapshot_dir_prefix("cache") + "abc123") == "cache"


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_a_sets_sweep_leaves_every_other_sets_files_even_when_they_look_stale(tmp_path: Path) -> None:
    """Another container's worker is pid 1 too: its live temporaries look like a dead predecessor's by pid and
    token. Only the set whose lock the sweep holds is swept."""
    dead = dead_pid()
    stranger = f".tmp-{os.getpid()}-0badcafe-"  # our pid, another token: a predecessor's, or another container's
    names = {
        "a_temp": f".tmp-{dead}-0badcafe-a-20260101T000000Z.sqlite.zst",
        "a_dir": f".tmp-{dead}-0badcafe-snapshot.a.xyz",
        "a_orphan": "a-20260101T000000Z.sqlite.zst",
        "b_temp": f"{stranger}b-20260101T000000Z.sqlite.zst",
        "b_manifest": f"{stranger}b-20260101T000000Z.sqlite.zst.json",
        "b_dir": f"{stranger}snapshot.b.xyz",
        "b_published": "b-20260101T000001Z.sqlite.zst",  # renamed in, its manifest not yet: mid-publication
        "nobody": f".tmp-{dead}-0badcafe-probe",
        "mine": f"{temp_prefix()}probe",
    }
    for key, name in names.items():
        path = tmp_path / name
        if key.endswith("_dir"):
            path.mkdir(mode=0o700)
        else:
            path.write_bytes(b"x")
            path.chmod(0o600)
    pipeline.remove_stale(LocalDestination(tmp_path), {"a"})
    left = {key for key, name in names.items() if (tmp_path / name).exists()}
    assert left == {"b_temp", "b_manifest", "b_dir", "b_published", "mine"}
    pipeline.remove_stale(LocalDestination(tmp_path), {"b"})  # b's own sweep (as its restarted worker)
    assert {key for key, name in names.items() if (tmp_path / name).exists()} == {"mine"}


# --- what a busy lock makes of a set's row in the cycle ---------------------------------------------------------

def test_a_busy_set_is_skipped_but_a_busy_error_inside_its_own_cycle_is_a_failure(tmp_path: Path, app_db: Path, monkeypatch) -> None:
    from worker.actions import backup
    from worker.context import Context
    from worker.config import load_config

    ctx = Context(config=load_config({"BACKUP_SOURCE": f"sqlite:///{app_db}", "BACKUP_DIR": str(tmp_path / "b")}, cwd=tmp_path),
                  cwd=tmp_path)
    (source,) = ctx.sources()
    with for_set(ctx.config.backup_dir, "app", "backup"):
        row = backup.backup_one(ctx, source, ctx.settings(upload=False))
    assert row["outcome"] == "skipped" and row["stage"] == "lock" and f"(pid {os.getpid()}, backup)" in row["reason"]

    def busy_inside(*_args: object, **_kwargs: object) -> dict:
        raise BusyError("a lock taken inside the cycle was busy")

    monkeypatch.setattr(backup.pipeline, "run_cycle", busy_inside)
    row = backup.backup_one(ctx, source, ctx.settings(upload=False))
    assert row["outcome"] == "failed" and row["reason"] == "a lock taken inside the cycle was busy"
