"""Carrying out a cleanup plan: each planned entry is removed through the directory descriptors of the plan, and
the results are counted per rule. A dry run previews the same plan without removing anything."""

from dataclasses import dataclass, field
import errno
import os
import threading

import structlog

from jobs.cleanup.plan import EXAMPLE_LIMIT, STOPPING, SUBDIRECTORY, RulePlan
from jobs.errors import Cancelled

log = structlog.get_logger("jobs.cleanup")

DISPLAY_LIMIT = 20  # paths listed per rule in a dry run


@dataclass
class RuleResult:
    """What one rule removed (or, in a dry run, would remove)."""

    rule: str
    files: int = 0
    bytes: int = 0
    vanished: int = 0  # gone before we got to them: counted, not an error
    changed: int = 0  # written again or replaced since the scan, no longer old: left in place
    failed: int = 0
    dirs_removed: int = 0
    missing: bool = False
    would_remove: list[str] = field(default_factory=list)  # dry run only, the first DISPLAY_LIMIT paths
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        """Return the JSON-able fields of this rule for a log line."""
        fields: dict[str, object] = {
            "rule": self.rule, "files": self.files, "bytes": self.bytes, "failed": self.failed,
            "vanished": self.vanished, "changed": self.changed, "dirs_removed": self.dirs_removed,
            "missing": self.missing,
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
    def changed(self) -> int:
        return sum(rule.changed for rule in self.rules)

    @property
    def dirs_removed(self) -> int:
        return sum(rule.dirs_removed for rule in self.rules)

    def fields(self) -> dict[str, object]:
        """Return the totals and one summary per rule, JSON-able, for the job's outcome log line."""
        return {
            "dry_run": self.dry_run, "files": self.files, "bytes": self.bytes, "failed": self.failed,
            "vanished": self.vanished, "changed": self.changed, "dirs_removed": self.dirs_removed,
            "missing": [rule.rule for rule in self.rules if rule.missing],
            "rules": [rule.summary() for rule in self.rules],
        }


def preview(plan: RulePlan) -> RuleResult:
    """Given a plan, return the result it would have, with the first DISPLAY_LIMIT paths listed; remove nothing.
    The plan lets go of its base directory."""
    plan.close()
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
    such, one that cannot be removed as failed; neither stops the rest. Each entry is asked again at the moment
    it is deleted (lstat through the directory held open): a file that is no longer older than the rule's age,
    whichever inode it now is, and a directory that is not the one the scan saw, stay and count as changed.

    Everything is removed through the base directory the plan scanned and kept open, entering subdirectories
    without following symlinks; and only if the rule's path still leads to that very directory (same device
    and inode, no symlink on the way): a base swapped for a symlink or another directory since the plan is
    refused, nothing removed. Raise Cancelled if `cancel` is set between two entries. The plan lets go of its
    base directory."""
    try:
        return _apply(plan, cancel)
    finally:
        plan.close()


def _apply(plan: RulePlan, cancel: threading.Event) -> RuleResult:
    result = _result(plan)
    if not plan.candidates or plan.base_fd is None:
        return result
    refusal = plan.base_changed()
    if refusal is not None:
        log.warning("cleanup.rule_refused", rule=plan.rule.describe(), reason=refusal)
        result.failed += len(plan.candidates)
        result.errors.append(f"refused: {refusal}")
        return result
    chain: list[tuple[str, int]] = [("", os.dup(plan.base_fd))]  # the open directories from the base down
    emptied: set[tuple[str, ...]] = set()  # directories this deletion removed entries from
    try:
        for candidate in plan.candidates:
            if cancel.is_set():
                log.warning("cleanup.rule", **result.summary(), cancelled=True)
                raise Cancelled(STOPPING)
            try:
                dir_fd = _enter(chain, candidate.directory)
                # Asked again at the moment of deletion: the app may have written the file again (or put a new
                # one, or made the directory anew) since the scan. Only what still goes, goes.
                info = os.stat(candidate.name, dir_fd=dir_fd, follow_symlinks=False)
                if not plan.still_goes(candidate, info, (*candidate.directory, candidate.name) in emptied):
                    result.changed += 1
                    continue
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
                emptied.add(candidate.directory)
                if candidate.is_dir:
                    result.dirs_removed += 1
                else:
                    result.files += 1
                    result.bytes += info.st_size
    finally:
        for _, fd in chain:
            os.close(fd)
    return result


def _result(plan: RulePlan) -> RuleResult:
    return RuleResult(rule=plan.rule.describe(), vanished=plan.vanished, failed=plan.failed, missing=plan.missing,
                      errors=list(plan.errors))


def _enter(chain: list[tuple[str, int]], directory: tuple[str, ...]) -> int:
    """Move the chain of open directories to `directory` below the base; return its descriptor. Raise OSError
    if one cannot be opened (the chain then ends at the deepest directory that could)."""
    depth = 0
    while depth < len(directory) and depth + 1 < len(chain) and chain[depth + 1][0] == directory[depth]:
        depth += 1
    while len(chain) > depth + 1:
        os.close(chain.pop()[1])
    for name in directory[depth:]:
        chain.append((name, os.open(name, SUBDIRECTORY, dir_fd=chain[-1][1])))
    return chain[-1][1]

