"""`backup`: one backup cycle now; also the scheduler's backup job.

A cycle backs up each configured source in turn (`backup_one`): its snapshot, upload and retention, scoped to
its own backup set, under that set's lock (`worker.lock.for_set`). One failing source does not stop the others;
the cycle fails if any failed, and its outcome event says which (`sources`, `failed_sources`).

Locks are per set, so sets that share BACKUP_DIR (several workers, or a manual `backup` beside the scheduled
one) back up at the same time; a set whose lock another run holds is skipped, with the holder named
(`skipped_sources`), and the others go on. The scheduler keeps one `backup` job that runs the worker's own sets
in turn: they never race each other, and one cycle's outcome tells about all of them.
"""

from contextlib import nullcontext
import sys
import time
from typing import Any

import structlog

from jobs import ownership, pipeline
from jobs.artifacts import BackupSet
from jobs.engines import Source
from jobs.errors import BusyError, Cancelled, JobError
from jobs.volume import explain, require_usable
from worker.context import EXIT_FAILED, Context
from worker.output import print_json, report_failure, say
from worker.purge import purge_after_backup, rules_for
from worker.lock import for_set
from worker.runs import Outcome, fail_if_any_failed, run_job
from worker.text import human_size

log = structlog.get_logger("worker.actions.backup")


def backup_one(ctx: Context, source: Source, settings: pipeline.BackupSettings) -> dict[str, Any]:
    """Given one configured source, run its whole cycle (backup, upload, retention of its set) under its set's
    lock; return its row: `outcome` (succeeded, failed, or skipped when another run holds the set's lock),
    `stage` and `reason` (None on success) and the cycle's fields (artifact, sizes, check, uploads, pruned).
    Raise only Cancelled: any other failure is this source's alone."""
    started = time.monotonic()
    row: dict[str, Any] = {"outcome": None, "stage": None, "reason": None}
    locked = skipped = False
    with structlog.contextvars.bound_contextvars(source=source.name()):
        try:
            rules = rules_for(ctx, source)  # RETENTION_RULES apply to the main source
            with for_set(ctx.config.backup_dir, source.name()):
                locked = True
                # SQLite: the raw snapshot stays on the volume until the purge ends, which compares rows with it
                with pipeline.kept_snapshot(ctx.config.backup_dir) if rules else nullcontext() as kept:
                    cycle = pipeline.run_cycle(source, settings, ctx.cancel, keep_snapshot=kept)
                    row.update(cycle.fields())  # the log event's and the catalog row's form, built here at the edge
                    if rules:
                        row.update(purge_after_backup(ctx, source, rules, cycle, kept))  # only after its full success
        except Cancelled:
            raise
        except JobError as error:  # BusyError before the lock was ours: another run is backing this set up now
            skipped = isinstance(error, BusyError) and not locked
            row.update({**error.fields, "stage": error.stage, "reason": str(error)})
        except OSError as error:  # a filesystem problem we did not foresee: still one sentence with the path
            row.update(stage="store", reason=explain(error))
        except Exception as error:  # this source's boundary: one source's bug must not stop the others' backups
            row.update(stage="internal", reason=f"unexpected {type(error).__name__}: {error}; this is a bug, please report it with the log")
            log.error("backup.source_crashed", exc_info=True)
        row["outcome"] = "skipped" if skipped else "failed" if row["stage"] else "succeeded"
        row["duration_s"] = round(time.monotonic() - started, 3)
        if row["outcome"] == "succeeded":
            log.info("backup.source_succeeded", artifact=row.get("artifact"), duration_s=row["duration_s"])
        elif skipped:
            log.warning("backup.source_skipped", reason=row["reason"], duration_s=row["duration_s"])
        else:
            log.error("backup.source_failed", stage=row["stage"], reason=row["reason"], duration_s=row["duration_s"])
    return row


def run_sources(ctx: Context, sources: list[Source], settings: pipeline.BackupSettings) -> dict[str, Any]:
    """Back up each source in turn; return the cycle's fields. Raise JobError (with those fields) if any failed:
    with one source its own stage and reason, with several the failed sets named; else BusyError (the run is
    skipped) if another run held the lock of any, naming those sets and their holders."""
    rows: dict[str, dict[str, Any]] = {}
    for source in sources:
        if ctx.cancel.is_set():
            raise Cancelled(f"backup cancelled before {source.name()}; the sets done so far are kept",
                            fields={"sources": rows})
        try:
            rows[source.name()] = backup_one(ctx, source, settings)
        except Cancelled as error:
            error.fields = {**error.fields, "sources": rows}
            raise
    failed = [name for name, row in rows.items() if row["outcome"] == "failed"]
    skipped = [name for name, row in rows.items() if row["outcome"] == "skipped"]
    fields: dict[str, Any] = {"sources": rows, "failed_sources": failed, "skipped_sources": skipped}
    if len(rows) == 1:  # one source: its fields at the top, as before there were several
        (row,) = rows.values()
        fields = {**{k: v for k, v in row.items() if k not in ("outcome", "stage", "reason", "duration_s")}, **fields}
    else:
        warned = [f"{name}: {warning}" for name, row in rows.items() for warning in row.get("warnings", [])]
        if warned:
            fields["warnings"] = warned
    fail_if_any_failed(rows, fields, "sources")
    if not skipped:
        return fields
    if len(rows) == 1:
        raise BusyError(rows[skipped[0]]["reason"], fields=fields)
    done = [name for name in rows if name not in skipped]
    raise BusyError("; ".join(f"{name}: {rows[name]['reason']}" for name in skipped)
                    + (f" (backed up: {', '.join(done)})" if done else ""), fields=fields)


def backup_job(ctx: Context, upload: bool = True, only: list[str] | None = None) -> Outcome:
    """Run one backup cycle of every configured source (or of the sets in `only`), each under its set's lock,
    as the job `backup`."""

    def work() -> dict[str, Any]:
        sources = ctx.sources(only)
        require_usable(ctx.config.backup_dir)
        return run_sources(ctx, sources, ctx.settings(upload))

    return run_job("backup", ctx.catalog, work)


def take_over(ctx: Context) -> None:
    """`backup --take-over`: make each configured source the owner of its set (see jobs.identity), saying whose it
    was, before the cycle runs."""
    settings = ctx.settings()
    for source in ctx.sources():
        backup_set = BackupSet(source.name(), source.kind)
        with for_set(ctx.config.backup_dir, source.name(), "take-over"):
            for former in ownership.take_over(source, settings, backup_set, ctx.cancel):
                say(f"{backup_set}: this source takes the set over from {former}")


def cmd_backup(ctx: Context, no_upload: bool, as_json: bool = False, take: bool = False) -> int:
    ctx.sources()  # no source configured is a usage error, before any run starts
    if take:
        take_over(ctx)
    outcome = backup_job(ctx, upload=not no_upload)
    if as_json:
        print_json(outcome)
        return report_failure(outcome)
    rows = outcome.fields.get("sources") or {}
    if len(rows) < 2:  # one source (or a cycle that stopped before any): as before there were several
        if outcome.ok:
            _say_done(ctx, outcome.fields)
        return report_failure(outcome)
    for name, row in rows.items():
        if row["outcome"] == "succeeded":
            _say_done(ctx, row, f"{name}: ")
        elif row["outcome"] == "skipped":
            print(f"{name}: backup skipped: {row['reason']}", file=sys.stderr, flush=True)
        else:
            print(f"{name}: backup failed at stage {row['stage']}: {row['reason']}", file=sys.stderr, flush=True)
    return 0 if outcome.ok else EXIT_FAILED


def _say_done(ctx: Context, fields: dict[str, Any], prefix: str = "") -> None:
    say(f"{prefix}backup {fields['artifact']} written to {ctx.config.backup_dir} "
        f"({human_size(fields['raw_size'])} -> {human_size(fields['size'])}, {fields['verified']} passed)")
    for warning in fields.get("warnings", []):
        print(f"{prefix}warning: {warning}", file=sys.stderr, flush=True)
    if fields.get("uploaded"):
        say(f"{prefix}uploaded {', '.join(fields['uploaded'])} to {ctx.remote().url()}")
