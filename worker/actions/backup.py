"""`backup`: one backup cycle now; also the scheduler's backup job."""

from typing import Any

from jobs import pipeline
from jobs.volume import require_usable
from worker.actions.context import Context
from worker.actions.output import human_size, print_json, report_failure, say
from worker.actions.purge import purge_after_backup
from worker.lock import exclusive
from worker.runs import Outcome, run_job


def backup_job(ctx: Context, upload: bool = True) -> Outcome:
    """Run one backup cycle under the backup lock, as the job `backup`."""

    def work() -> dict[str, Any]:
        source = ctx.source()
        require_usable(ctx.config.backup_dir)
        with exclusive(ctx.config.backup_dir):
            return purge_after_backup(ctx, ctx.config.source_url, pipeline.run_cycle(source, ctx.settings(upload), ctx.cancel))

    return run_job("backup", ctx.catalog, work)


def cmd_backup(ctx: Context, no_upload: bool, as_json: bool = False) -> int:
    ctx.source()  # a missing BACKUP_SOURCE is a usage error, before any run starts
    outcome = backup_job(ctx, upload=not no_upload)
    if as_json:
        print_json(outcome)
    elif outcome.ok:
        say(f"backup {outcome.fields['artifact']} written to {ctx.config.backup_dir} "
            f"({human_size(outcome.fields['raw_size'])} -> {human_size(outcome.fields['size'])}, "
            f"{outcome.fields['verified']} passed)")
        if outcome.fields.get("uploaded"):
            say(f"uploaded {', '.join(outcome.fields['uploaded'])} to {ctx.remote().url()}")
    return report_failure(outcome)
