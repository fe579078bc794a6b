"""`cleanup`: apply the cleanup rules now; also the scheduler's cleanup job."""

from typing import Any

from jobs.cleanup import run_cleanup
from worker.context import Context
from worker.output import report_failure, say
from worker.runs import Outcome, run_job
from worker.text import human_size


def cleanup_job(ctx: Context, dry_run: bool = False) -> Outcome:
    def work() -> dict[str, Any]:
        report = run_cleanup(ctx.config.cleanup_rules, dry_run=dry_run, now=None, cancel=ctx.cancel,
                             guard=ctx.config.cleanup_guard)
        return report.fields()

    return run_job("cleanup", ctx.catalog, work)


def cmd_cleanup(ctx: Context, dry_run: bool) -> int:
    if not ctx.config.cleanup_rules:
        say("no CLEANUP_RULES are set; nothing to do")
    outcome = cleanup_job(ctx, dry_run)
    if outcome.ok:
        verb = "would remove" if dry_run else "removed"
        for rule in outcome.fields["rules"]:
            state = " (directory missing)" if rule["missing"] else ""
            say(f"  {rule['rule']}: {rule['files']} files, {human_size(rule['bytes'])}{state}")
            for path in rule.get("would_remove", []):
                say(f"    {path}")
            for error in rule.get("errors", []):
                say(f"    not removed: {error}")
        say(f"cleanup {verb} {outcome.fields['files']} files, {human_size(outcome.fields['bytes'])}"
            + (f"; {outcome.fields['changed']} changed since the scan, left in place" if outcome.fields["changed"] else "")
            + (f"; {outcome.fields['failed']} could not be removed" if outcome.fields["failed"] else ""))
    return report_failure(outcome)
