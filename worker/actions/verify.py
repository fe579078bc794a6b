"""`verify`: re-prove a backup: size and checksum, decompression, the engine's own check."""

from pathlib import Path
import tempfile
from typing import Any

from jobs import restore as restoring
from jobs.artifacts import temp_prefix
from jobs.backups import list_backups
from worker.actions.context import Context
from worker.actions.output import report_failure, say
from worker.actions.selection import fetch, select, where, workdir
from worker.runs import run_job


def cmd_verify(ctx: Context, wanted: str | None, remote: bool) -> int:
    destination, location = where(ctx, remote)

    def work() -> dict[str, Any]:
        backups, _ = list_backups(destination)
        backup = select(backups, wanted, location)
        with tempfile.TemporaryDirectory(prefix=temp_prefix() + "verify-", dir=workdir(ctx)) as scratch:
            artifact = fetch(ctx, destination, backup, Path(scratch))
            with restoring.proven_raw(artifact, backup, Path(scratch), ctx.cancel) as (_, checks):
                pass
        return {"backup": backup.id, "location": destination.location, "checks": checks}

    outcome = run_job("verify", ctx.catalog, work)
    if outcome.ok:
        say(f"{outcome.fields['backup']} is sound: {', '.join(outcome.fields['checks'])} passed")
    return report_failure(outcome)
