"""`prune`: apply retention now, locally and on the bucket, and print the plan: per backup, every rule that keeps
it, or that nothing does (`--json`: the same as an array of {"id", "location", "keep", "reasons"}). Only the
configured backup sets are ever considered; other sets in the same directory or bucket are left alone."""

from contextlib import nullcontext
import json
import sys
from typing import Any

from jobs import identity, pipeline, retention
from jobs.artifacts import BackupSet
from jobs.backups import list_backups, sets_in
from jobs.destinations import Destination
from jobs.intact import CACHE_NAME, IntactCache
from jobs.volume import require_usable
from worker.context import Context, UsageError
from worker.output import report_failure, say
from worker.purge import dry_run_report
from worker.lock import for_deletion, for_sets
from worker.runs import run_job


def prune_sets(ctx: Context, destination: Destination) -> list[BackupSet]:
    """Return the sets prune looks at on `destination`: the configured ones, else those named BACKUP_NAME.
    Raise UsageError when neither is set: prune never guesses whose backups it may delete."""
    if ctx.config.sources:
        return ctx.backup_sets()
    if ctx.config.backup_name:
        return [found for found in sets_in(destination, ctx.cancel) if found.name == ctx.config.backup_name]
    raise UsageError("prune needs to know whose backups it may delete; set BACKUP_SOURCE (or BACKUP_NAME, the backup set's name)")


def _print_plan(plan: retention.Plan, location: str, backup_set: BackupSet, policy: retention.Policy, dry_run: bool) -> None:
    say(f"{location}: keep {len(plan.keep)}, delete {len(plan.delete)} of the set {backup_set}"
        + (" (dry run: nothing deleted)" if dry_run else ""))
    say(f"{location} policy: {policy.describe()}")
    for row in plan.describe(location):
        say(f"  {'keep' if row['keep'] else 'delete':<6} {row['id']:<44} {plan.why(row['id'])}")


def cmd_prune(ctx: Context, dry_run: bool, as_json: bool = False) -> int:
    if not (ctx.config.sources or ctx.config.backup_name):
        prune_sets(ctx, ctx.local)  # the usage error, before any run starts
    require_usable(ctx.config.backup_dir)

    def work() -> dict[str, Any]:
        sides = ctx.policies()
        fields: dict[str, Any] = {"dry_run": dry_run}
        names = [found.name for found in ctx.backup_sets()] or [ctx.config.backup_name]
        rows: list[dict[str, object]] = []
        with for_sets(ctx.config.backup_dir, names, "prune"), \
                (nullcontext() if dry_run else for_deletion(ctx.config.backup_dir)):
            owners = {spec_set: ctx.source(spec_set.name) for spec_set in ctx.backup_sets()}
            for destination, side_policy in sides:
                deleted = []
                for backup_set in prune_sets(ctx, destination):
                    if backup_set in owners:  # never plan on a set another source writes into (jobs.identity)
                        found, _ = list_backups(destination, backup_set, ctx.cancel)
                        identity.require_own(found, identity.of(owners[backup_set], ctx.config.backup_dir),
                                             identity.adopted(ctx.config.backup_dir, backup_set), backup_set, destination.url())
                    plan = pipeline.plan_retention(destination, side_policy, backup_set=backup_set, cancel=ctx.cancel,
                                                   cache=IntactCache(ctx.config.backup_dir / CACHE_NAME))
                    rows += plan.describe(destination.location)
                    if not as_json:
                        _print_plan(plan, destination.location, backup_set, side_policy, dry_run)
                    if not dry_run:
                        pipeline.carry_out(destination, plan, cancel=ctx.cancel)
                    deleted += [b.id for b in plan.delete]
                fields[f"{destination.location}_delete"] = deleted
            # RETENTION_RULES: rows each rule would delete (on stderr with --json: stdout holds only the array)
            fields.update(dry_run_report(ctx, show=_on_stderr if as_json else say) if dry_run else {})
            if as_json:
                say(json.dumps(rows, indent=2))
            return fields

    return report_failure(run_job("prune", ctx.catalog, work))


def _on_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
