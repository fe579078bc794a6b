"""`restore`: fetch, verify, then restore a backup to a new file or over the live database."""

from datetime import datetime, timezone
from pathlib import Path
import signal
import sys
import tempfile
from typing import Any

import structlog

from jobs import offsite, restore as restoring
from jobs.artifacts import temp_prefix
from jobs.backups import Backup, BackupSet
from worker.actions.context import Context, UsageError
from worker.actions.output import human_age, human_size, report_failure, say
from worker.actions.selection import fetch, reading, wanted, where, workdir
from worker.runs import run_job

log = structlog.get_logger("worker.actions.restore")

CANCELLED = "restore cancelled; nothing was changed"


def confirm(question: str, assume_yes: bool) -> None:
    """Ask a person to type `yes`; raise UsageError when nobody can answer and --yes is missing, when the answer
    is not yes, or at the first Ctrl-C."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — refusing without confirmation; run it in a terminal or add --yes")
    # While a person is asked, Ctrl-C means "no" at once (elsewhere the first one asks a running job to stop).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print(f"{question}\nType yes to continue: ", end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise UsageError(CANCELLED) from None
    finally:
        signal.signal(signal.SIGINT, previous)
    if answer.strip().lower() != "yes":
        raise UsageError(CANCELLED)


def describe(backup: Backup, location: str, now: datetime | None = None) -> str:
    """Return a backup as a person checks it before a restore: id, creation time and age, sizes, location."""
    age = human_age(((now or datetime.now(timezone.utc)) - backup.created_at).total_seconds())
    raw = backup.manifest.get("raw_size")
    return (f"{backup.id} (created {backup.manifest['created_at']}, {age} ago, {human_size(backup.size)}"
            + (f", {human_size(raw)} restored" if isinstance(raw, int) else "") + f", {location})")


def cmd_restore(ctx: Context, ident: str | None, from_s3: bool, to: Path | None, target_url: str | None,
                assume_yes: bool, fallback: bool = False, source_name: str | None = None) -> int:
    if target_url:
        raise UsageError("--target-url restores into a PostgreSQL or Redis server, which this version does not support yet; use --to PATH")
    destination, location = where(ctx, from_s3)
    if to is not None:
        to = to.resolve()
        problem = restoring.new_file_problem(to)
        if problem:
            raise UsageError(problem)
    source = None if to else ctx.restore_source(source_name, ident)  # refuses Redis before anything is fetched
    request = wanted(ctx, destination, location, ident, source_name)
    scratch_dir = to.parent if to else workdir(ctx)

    with reading(ctx, from_s3):
        chosen: Backup | None = None
        if not from_s3 or source is not None:
            chosen = request.pick(destination, location, ctx)
        if source is not None:
            live = BackupSet(source.name(), source.kind)
            if chosen.backup_set != live:
                raise UsageError(f"{chosen.id} is a backup of the set {chosen.backup_set}, not of {live} that BACKUP_SOURCE "
                                 f"holds; restore it to a new file with --to PATH")
            maybe = " (or, if it proves damaged, the newest intact older one)" if fallback else ""
            confirm(f"This replaces the live database {source.target()} with the backup {describe(chosen, location)}{maybe}. "
                    "Its current content is saved first as a safety copy. Stop the app's writers before you go on; "
                    "open connections will see the restored data", assume_yes)

        def work() -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix=temp_prefix() + "restore-", dir=scratch_dir) as scratch:
                if from_s3:
                    backup, artifact, notes = offsite.pick_restorable(destination, Path(scratch), ctx.cancel, ident,
                                                                      fallback, request.backup_set)
                    for note in notes:
                        log.warning("restore.note", note=note)
                else:
                    backup = chosen
                    artifact = fetch(ctx, destination, backup, Path(scratch))
                log.info("restore.selected", backup=backup.id, location=destination.location, created_at=backup.manifest["created_at"])
                if to is not None:
                    checks = restoring.restore_to_file(artifact, backup, to, ctx.cancel)
                    return {"backup": backup.id, "restored_to": str(to), "checks": checks}
                safety, checks = restoring.restore_over(artifact, backup, source, workdir(ctx), ctx.cancel,
                                                        notify=lambda line: print(line, file=sys.stderr, flush=True))
                fields = {"backup": backup.id, "restored_to": source.target(), "checks": checks}
                return {**fields, "safety_copy": str(safety)} if safety else fields

        outcome = run_job("restore", ctx.catalog, work)
    if outcome.ok:
        say(f"restored {outcome.fields['backup']} from {destination.location} to {outcome.fields['restored_to']} "
            f"({', '.join(outcome.fields['checks'])} passed)")
        if "safety_copy" in outcome.fields:
            say(f"the previous database was saved as {outcome.fields['safety_copy']}")
    return report_failure(outcome)
