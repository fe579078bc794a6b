"""Cleanup: remove old temporary and audio files by rule. Decide first (scan and plan), then act (delete).

A rule is `GLOB=AGE`. In the glob, `*`, `?` and `[...]` match within one path segment (dot files included: a temp
directory is swept whole); `**` matches any number of directories, and a trailing `**` every file below. The part
before the first wildcard is the rule's base directory, which the rule never leaves.

Only regular files and symlinks (never their targets) older than AGE by modification time are removed. Directories
are read through file descriptors opened with O_NOFOLLOW, from the base down, both when scanning and when deleting:
a symlinked directory is never descended, and a directory swapped for a symlink between plan and delete is refused,
not followed. Under a `**` rule a directory the plan empties is removed too, once it has itself been unchanged for
AGE (so a directory the app just created is left alone); the base directory never is.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
import errno
import fnmatch
import os
from pathlib import Path
import re
import threading

import structlog

from jobs.durations import format_duration, parse_duration
from jobs.errors import Cancelled

log = structlog.get_logger("jobs.cleanup")

DISPLAY_LIMIT = 20  # paths listed per rule in a dry run
EXAMPLE_LIMIT = 5  # error messages kept per rule

_EXAMPLE = "/tmp/audio/*.mp3=24h"
_WILDCARD = re.compile(r"[*?[]")
_SEPARATOR = re.compile(r"[;\n]")
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SUBDIRECTORY = _DIRECTORY | os.O_NOFOLLOW
_STOPPING = "the worker is stopping; cleanup stopped early"
_LABELS = ("backup directory", "app directory", "home directory")
SYSTEM_DIRECTORIES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr")

# One matcher per glob segment below the base; None stands for `**`.
Matcher = Callable[[str], object] | None


@dataclass(frozen=True)
class CleanupRule:
    pattern: str  # absolute glob as written after resolving against cwd
    base: Path  # non-glob prefix directory
    age: timedelta
    recursive: bool  # pattern contains **

    def describe(self) -> str:
        """Return the rule as an operator writes it, e.g. `/tmp/rose_audio/*.mp3=24h`."""
        return f"{self.pattern}={format_duration(self.age)}"


@dataclass(slots=True)
class Candidate:
    """One entry the plan would remove, as the scan found it."""

    directory: tuple[str, ...]  # directories between the base and the entry
    name: str
    size: int
    mtime: float
    is_dir: bool = False


@dataclass
class RulePlan:
    """What one rule would remove, and what the scan could not read."""

    rule: CleanupRule
    now: float  # POSIX timestamp the ages are measured from
    candidates: list[Candidate] = field(default_factory=list)
    missing: bool = False
    vanished: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

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


@dataclass
class RuleResult:
    """What one rule removed (or, in a dry run, would remove)."""

    rule: str
    files: int = 0
    bytes: int = 0
    vanished: int = 0  # gone before we got to them: counted, not an error
    failed: int = 0
    dirs_removed: int = 0
    missing: bool = False
    would_remove: list[str] = field(default_factory=list)  # dry run only, the first DISPLAY_LIMIT paths
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """Return the JSON-able fields of this rule for a log line."""
        fields: dict[str, object] = {
            "rule": self.rule, "files": self.files, "bytes": self.bytes, "failed": self.failed,
            "vanished": self.vanished, "dirs_removed": self.dirs_removed, "missing": self.missing,
        }
        if self.errors:
            fields["errors"] = list(self.errors)
        if self.would_remove:
            fields["would_remove"] = list(self.would_remove)
        return fields


@dataclass
class CleanupReport:
    """Every rule's result and the totals."""

    dry_run: bool
    rules: list[RuleResult] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(rule.files for rule in self.rules)

    @property
    def bytes(self) -> int:
        return sum(rule.bytes for rule in self.rules)

    @property
    def failed(self) -> int:
        return sum(rule.failed for rule in self.rules)

    @property
    def vanished(self) -> int:
        return sum(rule.vanished for rule in self.rules)

    @property
    def dirs_removed(self) -> int:
        return sum(rule.dirs_removed for rule in self.rules)

    def fields(self) -> dict[str, object]:
        """Return the totals and one summary per rule, JSON-able, for the job's outcome log line."""
        return {
            "dry_run": self.dry_run, "files": self.files, "bytes": self.bytes, "failed": self.failed,
            "vanished": self.vanished, "dirs_removed": self.dirs_removed,
            "missing": [rule.rule for rule in self.rules if rule.missing],
            "rules": [rule.summary() for rule in self.rules],
        }


# --- rules ------------------------------------------------------------------------------------------------------

def parse_rules(text: str, cwd: Path) -> list[CleanupRule]:
    """Given CLEANUP_RULES (`GLOB=AGE` pairs separated by `;` or newlines) and the directory relative globs start
    from, return the rules in order. Raise ValueError naming every bad pair and how to write it."""
    rules: list[CleanupRule] = []
    problems: list[str] = []
    for pair in _SEPARATOR.split(text):
        pair = pair.strip()
        if not pair:
            continue
        try:
            rules.append(_parse_pair(pair, cwd))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("; ".join(problems))
    return rules


def _parse_pair(pair: str, cwd: Path) -> CleanupRule:
    glob, equals, age_text = pair.rpartition("=")
    glob, age_text = glob.strip(), age_text.strip()
    if not equals:
        raise ValueError(f"{pair!r} has no '='; write GLOB=AGE like {_EXAMPLE}")
    if not glob:
        raise ValueError(f"{pair!r} has no glob before '='; write GLOB=AGE like {_EXAMPLE}")
    if not age_text:
        raise ValueError(f"{pair!r} has no age after '='; write GLOB=AGE like {_EXAMPLE}")
    try:
        age = parse_duration(age_text)
    except ValueError as error:
        raise ValueError(f"{pair!r}: {error}") from None
    if not age:
        raise ValueError(f"{pair!r} has an age of zero, which would delete files still being written; "
                         "give an age like 10m or 24h")
    if glob.endswith("/"):
        raise ValueError(f"{pair!r} ends with '/'; name the files, like /app/data/tmp/* or /app/data/tmp/**")
    parts = glob.split("/")
    if any("**" in part and part != "**" for part in parts):
        raise ValueError(f"{pair!r}: '**' must be a whole path segment, like /app/data/tmp/**/*.log")
    first_wildcard = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), len(parts))
    if ".." in parts[first_wildcard:]:
        raise ValueError(f"{pair!r}: '..' after a wildcard could leave the base directory; write the glob without it")
    pattern = os.path.normpath(os.path.join(os.path.abspath(cwd), glob))
    pattern = "/" + pattern.lstrip("/")  # normpath keeps a leading '//'
    base, segments = _split(pattern)
    return CleanupRule(pattern=pattern, base=Path(base), age=age, recursive="**" in segments)


def _split(pattern: str) -> tuple[str, list[str]]:
    """Split an absolute, normalised glob into its base directory and the segments below it."""
    parts = pattern.split("/")[1:]
    first_wildcard = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), len(parts) - 1)
    return "/" + "/".join(parts[:first_wildcard]), parts[first_wildcard:]


def _matchers(pattern: str) -> tuple[Matcher, ...]:
    """Compile the segments below the base. `**` never comes last: a trailing `**` reads as `**/*`."""
    segments: list[str] = []
    for segment in _split(pattern)[1]:
        if not (segment == "**" and segments and segments[-1] == "**"):
            segments.append(segment)
    if segments[-1] == "**":
        segments.append("*")
    return tuple(_matcher(segment) for segment in segments)


def _matcher(segment: str) -> Matcher:
    if segment == "**":
        return None
    if segment == "*":
        return _any_name
    if not _WILDCARD.search(segment):
        return segment.__eq__
    return re.compile(fnmatch.translate(segment)).match


def _any_name(name: str) -> bool:
    return True


def _closure(states: set[int], matchers: tuple[Matcher, ...]) -> frozenset[int]:
    """Add the states a `**` reaches by matching no directory at all."""
    result: set[int] = set()
    todo = list(states)
    while todo:
        state = todo.pop()
        if state not in result:
            result.add(state)
            if matchers[state] is None:
                todo.append(state + 1)
    return frozenset(result)


def _descend(states: frozenset[int], matchers: tuple[Matcher, ...], name: str) -> frozenset[int]:
    """Return the states for the entries of subdirectory `name`; empty when nothing below it can match."""
    last = len(matchers) - 1
    after: set[int] = set()
    for state in states:
        matcher = matchers[state]
        if matcher is None:
            after.add(state)
        elif state < last and matcher(name):
            after.add(state + 1)
    return _closure(after, matchers) if after else frozenset()


def _start(matchers: tuple[Matcher, ...]) -> frozenset[int]:
    return _closure({0}, matchers)


def _could_reach(matchers: tuple[Matcher, ...], directories: Sequence[str]) -> bool:
    """Whether the glob can match files inside the directory at `directories` below its base."""
    states = _start(matchers)
    for name in directories:
        states = _descend(states, matchers, name)
        if not states:
            return False
    return True


def _could_match(matchers: tuple[Matcher, ...], parts: Sequence[str]) -> bool:
    """Whether the glob matches the file at `parts` (directories, then the name) below its base."""
    states = _start(matchers)
    for name in parts[:-1]:
        states = _descend(states, matchers, name)
    matcher = matchers[-1]  # never `**`: a trailing one reads as `**/*`
    return len(matchers) - 1 in states and matcher is not None and bool(matcher(parts[-1]))


def dangerous_rule_reason(rule: CleanupRule, protected: list[Path], protected_files: Sequence[Path] = ()) -> str | None:
    """Given a rule, the protected directories `[backup_dir, cwd, home]` and the database's files (if any), return
    why the rule must be refused (`would sweep the backup directory /x; narrow the glob`), or None when it is
    safe. Paths are compared both as written and with symlinks resolved."""
    matchers = _matchers(rule.pattern)
    bases = _variants(rule.base)
    if "/" in bases:
        return "would sweep the root directory /; point it at a narrower directory"
    for system in SYSTEM_DIRECTORIES:
        if any(_relative_parts(base, system) is not None for base in bases):
            return f"would sweep the system directory {system}; cleanup is for the app's temp and audio files"
    backup_dir, *others = protected
    for index, directory in enumerate(others, start=1):  # the app and home directories: never an ancestor
        label = _LABELS[index] if index < len(_LABELS) else "protected directory"
        if any(_relative_parts(target, base) is not None for base in bases for target in _variants(directory)):
            return f"would sweep the {label} {directory}; point it at a subdirectory"
    for base in bases:
        for target in _variants(backup_dir):
            inside = _relative_parts(base, target)
            if inside is not None:
                where = "inside the" if inside else "the"
                return f"would sweep {where} backup directory {backup_dir}; point it elsewhere"
            below = _relative_parts(target, base)
            if below is not None and _could_reach(matchers, below):
                return f"would sweep the backup directory {backup_dir}; narrow the glob so it cannot reach it"
    for candidate in protected_files:
        for base in bases:
            for target in _variants(candidate):
                below = _relative_parts(target, base)
                if below and _could_match(matchers, below):
                    return f"would delete the database file {candidate}; narrow the glob so it cannot match it"
    return None


def _variants(path: Path) -> set[str]:
    return {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}


def _relative_parts(path: str, ancestor: str) -> tuple[str, ...] | None:
    """Return the names leading from `ancestor` down to `path`, or None when `path` is not at or below it."""
    if path == ancestor:
        return ()
    prefix = ancestor.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    return tuple(path[len(prefix):].split("/"))


# --- plan ---------------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Frame:
    """A directory being scanned: its descriptor, where it is and which glob states apply to its entries."""

    fd: int
    directory: tuple[str, ...]
    states: frozenset[int]
    removable: bool  # may go itself once emptied
    mtime: float
    pending: list[tuple[str, frozenset[int], bool, float]] = field(default_factory=list)
    emptied: bool = True  # every entry seen so far is planned to go


def plan_rule(rule: CleanupRule, *, now: datetime, cancel: threading.Event) -> RulePlan:
    """Given a rule and the time, scan its base directory and return what it would remove and why, without
    removing anything. A missing base is reported in the plan, as are entries that vanish or cannot be read.
    Raise Cancelled if `cancel` is set during the scan."""
    matchers = _matchers(rule.pattern)
    plan = RulePlan(rule=rule, now=now.timestamp())
    cutoff = plan.now - rule.age.total_seconds()
    try:
        base_fd = os.open(rule.base, _DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        plan.missing = True
        return plan
    except OSError as error:
        plan.note_failure(str(rule.base), error)
        return plan
    root = _Frame(fd=base_fd, directory=(), states=_start(matchers), removable=False, mtime=0.0)
    stack = [root]
    try:
        device = os.fstat(base_fd).st_dev
        _scan(plan, root, matchers, cutoff, device, cancel)
        while stack:
            frame = stack[-1]
            if frame.pending:
                name, states, removable, mtime = frame.pending.pop()
                try:
                    fd = os.open(name, _SUBDIRECTORY, dir_fd=frame.fd)
                except FileNotFoundError:
                    plan.vanished += 1
                    continue
                except OSError as error:  # swapped for a symlink (ELOOP), unreadable, too many open files
                    plan.note_failure(os.path.join(rule.base, *frame.directory, name), error)
                    frame.emptied = False
                    continue
                child = _Frame(fd=fd, directory=(*frame.directory, name), states=states, removable=removable,
                               mtime=mtime)
                stack.append(child)
                _scan(plan, child, matchers, cutoff, device, cancel)
                continue
            stack.pop()
            os.close(frame.fd)
            if stack:
                parent = stack[-1]
                if frame.emptied and frame.removable:
                    plan.candidates.append(Candidate(parent.directory, frame.directory[-1], 0, frame.mtime, True))
                else:
                    parent.emptied = False
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
                    raise Cancelled(_STOPPING)
                name = entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        states = _descend(frame.states, matchers, name)
                        if not states:
                            frame.emptied = False
                            continue
                        removable, mtime = False, 0.0
                        if any(matchers[state] is None for state in states):  # inside a `**`
                            info = entry.stat(follow_symlinks=False)
                            removable, mtime = info.st_mtime < cutoff and info.st_dev == device, info.st_mtime
                        frame.pending.append((name, states, removable, mtime))
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


# --- act ------------------------------------------------------------------------------------------------------

def preview(plan: RulePlan) -> RuleResult:
    """Given a plan, return the result it would have, with the first DISPLAY_LIMIT paths listed; remove nothing."""
    result = _result(plan)
    for candidate in plan.candidates:
        if candidate.is_dir:
            result.dirs_removed += 1
        else:
            result.files += 1
            result.bytes += candidate.size
        if len(result.would_remove) < DISPLAY_LIMIT:
            result.would_remove.append(plan.path(candidate) + ("/" if candidate.is_dir else ""))
    return result


def apply_plan(plan: RulePlan, *, cancel: threading.Event) -> RuleResult:
    """Given a plan, remove its candidates and return what was removed. An entry that vanished is counted as
    such, one that cannot be removed as failed; neither stops the rest. Directories are entered from the base
    without following symlinks. Raise Cancelled if `cancel` is set between two entries."""
    result = _result(plan)
    if not plan.candidates:
        return result
    try:
        base_fd = os.open(plan.rule.base, _DIRECTORY)
    except OSError as error:
        _count_all(plan, result, error)
        return result
    chain: list[tuple[str, int]] = [("", base_fd)]  # the open directories from the base down
    try:
        for candidate in plan.candidates:
            if cancel.is_set():
                log.warning("cleanup.rule", **result.summary(), cancelled=True)
                raise Cancelled(_STOPPING)
            try:
                dir_fd = _enter(chain, candidate.directory)
                if candidate.is_dir:
                    os.rmdir(candidate.name, dir_fd=dir_fd)
                else:
                    os.unlink(candidate.name, dir_fd=dir_fd)  # unlinkat never follows a symlink
            except FileNotFoundError:
                result.vanished += 1
            except OSError as error:
                if candidate.is_dir and error.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    continue  # something new arrived in it since the scan: it stays
                result.failed += 1
                if len(result.errors) < EXAMPLE_LIMIT:
                    result.errors.append(f"{plan.path(candidate)}: {error.strerror or error}")
            else:
                if candidate.is_dir:
                    result.dirs_removed += 1
                else:
                    result.files += 1
                    result.bytes += candidate.size
    finally:
        for _, fd in chain:
            os.close(fd)
    return result


def _result(plan: RulePlan) -> RuleResult:
    return RuleResult(rule=plan.rule.describe(), vanished=plan.vanished, failed=plan.failed, missing=plan.missing,
                      errors=list(plan.errors))


def _count_all(plan: RulePlan, result: RuleResult, error: OSError) -> None:
    if isinstance(error, FileNotFoundError):
        result.vanished += len(plan.candidates)
        return
    result.failed += len(plan.candidates)
    result.errors.append(f"{plan.rule.base}: {error.strerror or error}")


def _enter(chain: list[tuple[str, int]], directory: tuple[str, ...]) -> int:
    """Move the chain of open directories to `directory` below the base; return its descriptor. Raise OSError
    if one cannot be opened (the chain then ends at the deepest directory that could)."""
    depth = 0
    while depth < len(directory) and depth + 1 < len(chain) and chain[depth + 1][0] == directory[depth]:
        depth += 1
    while len(chain) > depth + 1:
        os.close(chain.pop()[1])
    for name in directory[depth:]:
        chain.append((name, os.open(name, _SUBDIRECTORY, dir_fd=chain[-1][1])))
    return chain[-1][1]


def run_cleanup(rules: Sequence[CleanupRule], *, dry_run: bool, now: datetime | None,
                cancel: threading.Event, guard: Callable[[CleanupRule], str | None] | None = None) -> CleanupReport:
    """Given the rules, plan each in turn and (unless `dry_run`) remove what it found; return what was removed
    (or would be) per rule and in total. Each rule is logged as `cleanup.rule`; a missing base directory is a
    `cleanup.missing_directory` warning, not an error. `guard` (usually `dangerous_rule_reason` bound to the
    protected paths) is asked again before each rule, with symlinks resolved now: a rule whose base became a
    link into protected ground since start is refused and counted as failed. Raise Cancelled if `cancel` is set
    before the end."""
    moment = now or datetime.now(timezone.utc)
    report = CleanupReport(dry_run=dry_run)
    for rule in rules:
        if cancel.is_set():
            raise Cancelled(_STOPPING)
        refusal = guard(rule) if guard is not None else None
        if refusal:
            log.warning("cleanup.rule_refused", rule=rule.describe(), reason=refusal)
            refused = RulePlan(rule=rule, now=moment.timestamp(), failed=1, errors=[f"refused: {refusal}"])
            report.rules.append(preview(refused))
            continue
        plan = plan_rule(rule, now=moment, cancel=cancel)
        if plan.missing:
            log.warning("cleanup.missing_directory", rule=rule.describe(), directory=str(rule.base))
        result = preview(plan) if dry_run else apply_plan(plan, cancel=cancel)
        log.info("cleanup.rule", **result.summary(), dry_run=dry_run)
        report.rules.append(result)
    return report


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"
