"""`prune`: apply retention now, locally and on the bucket, and print the plan."""

from typing import Any

from jobs import pipeline
from worker.actions.context import Context
from worker.actions.output import report_failure, say
from worker.lock import exclusive
from worker.runs import run_job


def cmd_prune(ctx: Context, dry_run: bool) -> int:
    def work() -> dict[str, Any]:
        sides = ctx.policies()
        with exclusive(ctx.config.backup_dir):
            fields: dict[str, Any] = {"dry_run": dry_run}
            for destination, side_policy in sides:
                plan = pipeline.plan_retention(destination, side_policy)
                say(f"{destination.location}: keep {len(plan.keep)}, delete {len(plan.delete)}"
                    + (" (dry run: nothing deleted)" if dry_run else ""))
                for row in plan.describe():
                    say(f"  {row['action']:<6} {row['id']:<40} {row['reason']}")
                if not dry_run:
                    pipeline.carry_out(destination, plan)
                fields[f"{destination.location}_delete"] = [b.id for b in plan.delete]
            return fields

    return report_failure(run_job("prune", ctx.catalog, work))
