"""Scanning a rule's base directory into a plan of what would go, and why; nothing is removed here.

Directories are read through descriptors opened with O_NOFOLLOW, from the base down: a symlinked directory is
never descended. The base itself is opened from `/` down, every component with O_NOFOLLOW, and its descriptor
stays open until the plan has been carried out: the plan and the deletion act on the directory that was checked,
whatever happens to its path meanwhile.
"""

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
import os
from pathlib import Path
import stat
import threading

from jobs.cleanup.matcher import Matcher, compile_glob, descend, start_states
from jobs.cleanup.rules import CleanupRule
from jobs.durations import format_duration
from jobs.errors import Cancelled

EXAMPLE_LIMIT = 5  # error messages kept per rule
DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
SUBDIRECTORY = DIRECTORY | os.O_NOFOLLOW
STOPPING = "the worker is stopping; cleanup stopped early"


@dataclass(slots=True)
class Candidate:
    """One entry the plan would remove, as the scan found it."""

    directory: tuple[str, ...]  # directories between the base and the entry
    name: str
    size: int
    mtime: float
    is_dir: bool = False
    inode: int = 0  # of a directory: the one the scan saw (deleting its entries changes its mtime, not its inode)


@dataclass
class RulePlan:
    """What one rule would remove, and what the scan could not read. While `base_fd` is open the plan holds the
    base directory it scanned; `apply_plan` removes through it and closes it (so does `close`)."""

    rule: CleanupRule
    now: float  # POSIX timestamp the ages are measured from
    candidates: list[Candidate] = field(default_factory=list)
    missing: bool = False
    vanished: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    refused: str | None = None  # why the rule must not run; nothing was scanned
    base_path: str = ""  # the base with symlinks resolved when it was checked: no component of it is a link
    base_fd: int | None = None
    base_identity: tuple[int, int] = (0, 0)  # (st_dev, st_ino) of the directory that was checked

    def close(self) -> None:
        """Let go of the base directory; idempotent."""
        if self.base_fd is not None:
            os.close(self.base_fd)
            self.base_fd = None

    def base_changed(self) -> str | None:
        """Return why the rule's base is no longer the directory that was checked and scanned, or None."""
        now = os.path.realpath(self.rule.base)
        if now != self.base_path:
            return (f"its base directory {self.rule.base} now leads to {now}, not to the directory that was checked "
                    f"({self.base_path}); nothing was removed")
        try:
            fd = open_base(self.base_path)
        except OSError as error:
            return (f"its base directory {self.base_path} cannot be reached without following a symlink any more "
                    f"({error.strerror or error}); nothing was removed")
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        if (info.st_dev, info.st_ino) != self.base_identity:
            return f"its base directory {self.base_path} was replaced by another directory since it was checked; nothing was removed"
        return None

    @property
    def cutoff(self) -> float:
        """Return the modification time (POSIX) before which an entry is old enough to go."""
        return self.now - self.rule.age.total_seconds()

    def still_goes(self, candidate: Candidate, info: os.stat_result, emptied_here: bool = False) -> bool:
        """Given a candidate and what lstat says of its name at the moment of deletion, return whether it still
        goes: a file (whichever inode it is now) still older than the cutoff; the very directory that was scanned
        (same inode), still older than the cutoff unless `emptied_here` (this deletion removed entries from it,
        which changed its modification time)."""
        if candidate.is_dir:
            return (stat.S_ISDIR(info.st_mode) and info.st_ino == candidate.inode
                    and (emptied_here or info.st_mtime < self.cutoff))
        return info.st_mtime < self.cutoff

    def path(self, candidate: Candidate) -> str:
        """Return the full path of a candidate."""
        return os.path.join(self.rule.base, *candidate.directory, candidate.name)

    def reason(self, candidate: Candidate) -> str:
        """Return why the candidate goes, e.g. `last modified 30h ago, older than 24h`."""
        what = "empty directory, " if candidate.is_dir else ""
        return f"{what}last modified {_ago(self.now - candidate.mtime)} ago, older than {format_duration(self.rule.age)}"

    def note_failure(self, path: str, error: OSError) -> None:
        """Count an entry that could not be read or removed, keeping the first few messages."""
        self.failed += 1
        if len(self.errors) < EXAMPLE_LIMIT:
            self.errors.append(f"{path}: {error.strerror or error}")



@dataclass(slots=True)
class _Frame:
    """A directory being scanned: its descriptor, where it is and which glob states apply to its entries."""

    fd: int
    directory: tuple[str, ...]
    states: frozenset[int]
    removable: bool  # may go itself once emptied
    mtime: float
    inode: int = 0
    pending: list[tuple[str, frozenset[int], bool, float, int]] = field(default_factory=list)
    emptied: bool = True  # every entry seen so far is planned to go


def open_base(path: str) -> int:
    """Open the directory at the absolute `path` from `/` down, each component with O_NOFOLLOW; return its
    descriptor. Raise OSError: ELOOP when a component is a symlink, FileNotFoundError when one is missing."""
    fd = os.open("/", DIRECTORY)
    try:
        for name in (part for part in path.split("/") if part):
            child = os.open(name, SUBDIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def resolved_rule(rule: CleanupRule, base: str) -> CleanupRule:
    """Return `rule` with its base directory written as `base` (the same directory, symlinks resolved)."""
    return replace(rule, base=Path(base), pattern=base.rstrip("/") + rule.pattern[len(str(rule.base).rstrip("/")):])


def plan_rule(rule: CleanupRule, *, now: datetime, cancel: threading.Event,
              guard: Callable[[CleanupRule], str | None] | None = None) -> RulePlan:
    """Given a rule and the time, open its base directory, ask `guard` (if any) about exactly that directory,
    scan it and return what it would remove and why, without removing anything. The plan keeps the base open
    for `apply_plan`. A missing base is reported in the plan, as are entries that vanish or cannot be read, and
    a refusal. Raise Cancelled if `cancel` is set during the scan."""
    matchers = compile_glob(rule.pattern)
    plan = RulePlan(rule=rule, now=now.timestamp(), base_path=os.path.realpath(rule.base))
    cutoff = plan.cutoff
    try:
        base_fd: int | None = open_base(plan.base_path)
    except (FileNotFoundError, NotADirectoryError):
        base_fd, plan.missing = None, True
    except OSError as error:  # a component became a symlink since it was resolved (ELOOP), or unreadable
        plan.note_failure(str(rule.base), error)
        return plan
    refusal = guard(resolved_rule(rule, plan.base_path)) if guard is not None else None
    if refusal is not None or base_fd is None:
        if base_fd is not None:
            os.close(base_fd)
        if refusal is not None:
            plan.refused, plan.missing = refusal, False
            plan.failed, plan.errors = 1, [f"refused: {refusal}"]
        return plan
    info = os.fstat(base_fd)
    plan.base_identity = (info.st_dev, info.st_ino)
    plan.base_fd = os.dup(base_fd)
    root = _Frame(fd=base_fd, directory=(), states=start_states(matchers), removable=False, mtime=0.0)
    stack = [root]
    try:
        device = os.fstat(base_fd).st_dev
        _scan(plan, root, matchers, cutoff, device, cancel)
        while stack:
            frame = stack[-1]
            if frame.pending:
                name, states, removable, mtime, inode = frame.pending.pop()
                try:
                    fd = os.open(name, SUBDIRECTORY, dir_fd=frame.fd)
                except FileNotFoundError:
                    plan.vanished += 1
                    continue
                except OSError as error:  # swapped for a symlink (ELOOP), unreadable, too many open files
                    plan.note_failure(os.path.join(rule.base, *frame.directory, name), error)
                    frame.emptied = False
                    continue
                child = _Frame(fd=fd, directory=(*frame.directory, name), states=states, removable=removable,
                               mtime=mtime, inode=inode)
                stack.append(child)
                _scan(plan, child, matchers, cutoff, device, cancel)
                continue
            stack.pop()
            os.close(frame.fd)
            if stack:
                parent = stack[-1]
                if frame.emptied and frame.removable:
                    plan.candidates.append(Candidate(parent.directory, frame.directory[-1], 0, frame.mtime, True,
                                                     frame.inode))
                else:
                    parent.emptied = False
    except BaseException:
        plan.close()
        raise
    finally:
        for frame in stack:
            os.close(frame.fd)
    return plan


def _scan(plan: RulePlan, frame: _Frame, matchers: tuple[Matcher, ...], cutoff: float, device: int,
          cancel: threading.Event) -> None:
    """Read one directory: plan its old matching files, queue the subdirectories the glob can enter."""
    last = len(matchers) - 1
    match_file = matchers[last] if last in frame.states else None
    try:
        with os.scandir(frame.fd) as entries:
            for entry in entries:
                if cancel.is_set():
                    raise Cancelled(STOPPING)
                name = entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        states = descend(frame.states, matchers, name)
                        if not states:
                            frame.emptied = False
                            continue
                        removable, mtime = False, 0.0
                        if any(matchers[state] is None for state in states):  # inside a `**`
                            info = entry.stat(follow_symlinks=False)
                            removable, mtime = info.st_mtime < cutoff and info.st_dev == device, info.st_mtime
                        frame.pending.append((name, states, removable, mtime, entry.inode()))
                    elif (match_file is not None and match_file(name)
                          and (entry.is_file(follow_symlinks=False) or entry.is_symlink())):
                        info = entry.stat(follow_symlinks=False)
                        if info.st_mtime < cutoff:
                            plan.candidates.append(Candidate(frame.directory, name, info.st_size, info.st_mtime))
                        else:
                            frame.emptied = False
                    else:
                        frame.emptied = False
                except FileNotFoundError:
                    plan.vanished += 1
                except OSError as error:
                    plan.note_failure(os.path.join(plan.rule.base, *frame.directory, name), error)
                    frame.emptied = False
    except OSError as error:  # the listing itself failed part-way
        plan.note_failure(os.path.join(plan.rule.base, *frame.directory), error)
        frame.emptied = False


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"
