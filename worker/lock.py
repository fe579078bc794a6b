"""Locks in the backup directory: flocks on small files, which the kernel drops when the process dies, so a crash
never leaves a stale lock behind.

- One backup of a set at a time: `for_set` holds the set's own lock (`.backup-<set>.lock`) for a backup cycle,
  a prune, a pre-restore safety backup or the start-up sweep of that set's leftovers. Sets that share the backup
  directory never wait for each other; the same set is exclusive, and the second run is skipped with a reason
  naming the holder (pid and what it is doing).
- Retention and readers: the `retention` lock (`shared` / `for_deletion`), for the whole directory.
- One restore drill at a time: the `drill` lock (`exclusive`, worker/actions/drill.py).
"""

from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
import fcntl
import os
import time
from pathlib import Path

from jobs.errors import BusyError
from jobs.files import FILE_MODE, ensure_dir

_HOLDER_BYTES = 256


def set_lock_name(set_name: str) -> str:
    """Given a backup set's name, return the name of its lock: `backup-<set>` (the file `.backup-<set>.lock`)."""
    return f"backup-{set_name}"


@contextmanager
def exclusive(directory: Path, name: str, doing: str, busy: str | None = None) -> Iterator[None]:
    """Hold the `name` lock in `directory` for the block, recording this pid and `doing` as its holder. Raise
    BusyError if it is taken: `busy` (default `another {name} is running`) and the holder, like `(pid 12,
    backup)`."""
    ensure_dir(directory)
    path = directory / f".{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"{busy or f'another {name} is running'} ({_holder(fd)}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {doing}".encode()[:_HOLDER_BYTES], 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    """Return who holds the lock open at `fd`, as written by `exclusive`: `pid 12, backup`."""
    text = os.pread(fd, _HOLDER_BYTES, 0).decode(errors="replace").strip()
    pid, _, doing = text.partition(" ")
    if not pid.isdigit():
        return "holder unknown"
    return f"pid {pid}, {doing}" if doing else f"pid {pid}"


@contextmanager
def for_set(directory: Path, set_name: str, doing: str = "backup") -> Iterator[None]:
    """Hold the lock of the backup set `set_name` for the block. Raise BusyError naming the set and the holder
    if another run of that set holds it; other sets' runs never hold it."""
    with exclusive(directory, set_lock_name(set_name), doing, busy=f"another backup is running for the set {set_name}"):
        yield


@contextmanager
def for_sets(directory: Path, set_names: Iterable[str], doing: str) -> Iterator[None]:
    """Hold the locks of every set in `set_names` for the block, or none: raise BusyError for the first that
    another run holds."""
    with ExitStack() as held:
        for name in dict.fromkeys(set_names):
            held.enter_context(for_set(directory, name, doing))
        yield


@contextmanager
def free_sets(directory: Path, set_names: Iterable[str], doing: str) -> Iterator[list[str]]:
    """Hold the locks of the sets in `set_names` that no other run holds, and yield their names (busy ones are
    passed over: their own run looks after them)."""
    with ExitStack() as held:
        taken = []
        for name in dict.fromkeys(set_names):
            try:
                held.enter_context(for_set(directory, name, doing))
            except BusyError:
                continue
            taken.append(name)
        yield taken


# Retention and readers: verify and restore hold the `retention` lock shared while they read a backup; retention
# takes it exclusively before it deletes. flock never lets the two overlap, and the kernel drops both on death.
RETENTION = "retention"


@contextmanager
def shared(directory: Path, name: str = RETENTION, wait_s: float = 30.0) -> Iterator[None]:
    """Hold the `name` lock in `directory` shared for the block (any number of holders at once). Wait up to
    `wait_s` for an exclusive holder (a retention run deleting, which is quick); raise BusyError after that."""
    ensure_dir(directory)
    fd = os.open(directory / f".{name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(f"retention has been deleting backups in {directory} for over {wait_s:.0f} s; try again") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def for_deletion(directory: Path, name: str = RETENTION) -> Iterator[None]:
    """Hold the `name` lock in `directory` exclusively for the block, without waiting. Raise BusyError if a
    verify or restore holds it shared: retention then deletes nothing this time rather than wait."""
    ensure_dir(directory)
    fd = os.open(directory / f".{name}.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(f"a verify or restore is reading the backups in {directory}; nothing is deleted now, "
                            "the next retention run catches up") from None
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
