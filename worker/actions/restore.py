"""`restore`: fetch, verify, then restore a backup to a new file or over the live database."""

from pathlib import Path
import sys
import tempfile
from typing import Any

import structlog

from jobs import offsite, restore as restoring
from jobs.artifacts import temp_prefix
from jobs.backups import list_backups
from worker.actions.context import Context, UsageError
from worker.actions.output import report_failure, say
from worker.actions.selection import fetch, select, where, workdir
from worker.runs import run_job

log = structlog.get_logger("worker.actions.restore")


def confirm(question: str, assume_yes: bool) -> None:
    """Ask a person to type `yes`; raise UsageError when nobody can answer and --yes is missing."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — refusing without confirmation; run it in a terminal or add --yes")
    print(f"{question}\nType yes to continue: ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() != "yes":
        raise UsageError("restore cancelled; nothing was changed")


def cmd_restore(ctx: Context, wanted: str | None, from_s3: bool, to: Path | None, target_url: str | None,
                assume_yes: bool, fallback: bool = False) -> int:
    if target_url:
        raise UsageError("--target-url restores into a PostgreSQL or Redis server, which this version does not support yet; use --to PATH")
    destination, location = where(ctx, from_s3)
    if to is not None:
        to = to.resolve()
        problem = restoring.new_file_problem(to)
        if problem:
            raise UsageError(problem)
    source = None if to else ctx.source()
    if source is not None:
        confirm(f"This replaces the live database {source.target()} with a backup (its current content is saved first). "
                "Stop the app's writers before you go on; open connections will see the restored data", assume_yes)
    scratch_dir = to.parent if to else workdir(ctx)

    def work() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=temp_prefix() + "restore-", dir=scratch_dir) as scratch:
            if from_s3:
                backup, artifact, notes = offsite.pick_restorable(destination, Path(scratch), ctx.cancel, wanted, fallback)
                for note in notes:
                    log.warning("restore.note", note=note)
            else:
                backups, _ = list_backups(destination)
                backup = select(backups, wanted, location)
                artifact = fetch(ctx, destination, backup, Path(scratch))
            log.info("restore.selected", backup=backup.id, location=destination.location, created_at=backup.manifest["created_at"])
            if to is not None:
                checks = restoring.restore_to_file(artifact, backup, to, ctx.cancel)
                return {"backup": backup.id, "restored_to": str(to), "checks": checks}
            safety, checks = restoring.restore_over(artifact, backup, source, workdir(ctx), ctx.cancel)
            fields = {"backup": backup.id, "restored_to": source.target(), "checks": checks}
            return {**fields, "safety_copy": str(safety)} if safety else fields

    outcome = run_job("restore", ctx.catalog, work)
    if outcome.ok:
        say(f"restored {outcome.fields['backup']} from {destination.location} to {outcome.fields['restored_to']} "
            f"({', '.join(outcome.fields['checks'])} passed)")
        if "safety_copy" in outcome.fields:
            say(f"the previous database was saved as {outcome.fields['safety_copy']}")
    return report_failure(outcome)
