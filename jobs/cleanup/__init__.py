"""Cleanup: remove old temporary and audio files by rule. Decide first (scan and plan), then act (delete).

A rule is `GLOB=AGE`. In the glob, `*`, `?` and `[...]` match within one path segment (dot files included: a temp
directory is swept whole); `**` matches any number of directories, and a trailing `**` every file below. The part
before the first wildcard is the rule's base directory, which the rule never leaves.

Only regular files and symlinks (never their targets) older than AGE by modification time are removed; the age is
asked again at the moment of deletion, so a file the app wrote again after the scan stays. The base
directory is opened once, from `/` down with O_NOFOLLOW on every component of its resolved path, checked by the
guard, scanned and deleted from through that one descriptor; before deleting, its path must still lead to the same
directory (device and inode), or the rule is refused. Below it, directories are opened with O_NOFOLLOW too: a
symlinked directory is never descended, and one swapped for a symlink between plan and delete is not followed. Under a `**` rule a directory the plan empties is removed too, once it has itself been unchanged for
AGE (so a directory the app just created is left alone); the base directory never is.

Modules: `rules` (parsing and the guard), `matcher` (the glob), `plan` (the scan), `delete` (carrying it out).
"""

from collections.abc import Callable, Sequence
from datetime import datetime, timezone
import threading

import structlog

from jobs.cleanup.delete import CleanupReport, RuleResult, apply_plan, preview
from jobs.cleanup.plan import STOPPING, RulePlan, open_base, plan_rule
from jobs.cleanup.rules import SYSTEM_DIRECTORIES, CleanupRule, dangerous_rule_reason, parse_rules
from jobs.errors import Cancelled

log = structlog.get_logger("jobs.cleanup")

__all__ = ["CleanupReport", "CleanupRule", "RulePlan", "RuleResult", "SYSTEM_DIRECTORIES", "apply_plan",
           "dangerous_rule_reason", "open_base", "parse_rules", "plan_rule", "preview", "run_cleanup"]


def run_cleanup(rules: Sequence[CleanupRule], *, dry_run: bool, now: datetime | None,
                cancel: threading.Event, guard: Callable[[CleanupRule], str | None] | None = None) -> CleanupReport:
    """Given the rules, plan each in turn and (unless `dry_run`) remove what it found; return what was removed
    (or would be) per rule and in total. Each rule is logged as `cleanup.rule`; a missing base directory is a
    `cleanup.missing_directory` warning, not an error. `guard` (usually `dangerous_rule_reason` bound to the
    protected paths) is asked again before each rule about the base directory the plan holds open, with
    symlinks resolved now: a rule whose base became a link into protected ground since start is refused and
    counted as failed, and so is one whose base is swapped between the plan and the deletion. Raise Cancelled
    if `cancel` is set before the end."""
    moment = now or datetime.now(timezone.utc)
    report = CleanupReport(dry_run=dry_run)
    for rule in rules:
        if cancel.is_set():
            raise Cancelled(STOPPING)
        plan = plan_rule(rule, now=moment, cancel=cancel, guard=guard)
        try:
            if plan.refused:
                log.warning("cleanup.rule_refused", rule=rule.describe(), reason=plan.refused)
            if plan.missing:
                log.warning("cleanup.missing_directory", rule=rule.describe(), directory=str(rule.base))
            result = preview(plan) if dry_run else apply_plan(plan, cancel=cancel)
        finally:
            plan.close()
        log.info("cleanup.rule", **result.summary(), dry_run=dry_run)
        report.rules.append(result)
    return report
