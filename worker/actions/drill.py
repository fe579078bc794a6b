"""`drill`: prove that the off-site copies restore. For each configured set, the newest sound backup is fetched
from the bucket (from the volume with --local, or when no bucket is configured), proven, restored into a scratch
target and compared with what it recorded when it was made (`jobs.drill`); also the scheduler's drill job
(DRILL_SCHEDULE).

A drill is a job like the others (`drill`): start and outcome events, a catalog row, notifications on failure.
Each set has its own row (`sources`), as in a backup cycle; the run fails when any set's drill failed. One drill
runs at a time (the `drill` lock; a second is skipped with one sentence naming the first). A drill takes no set
lock, so a backup that falls due is never skipped because of it; it holds the `retention` lock
shared only while it takes its copy of the artifact (a hard link on the volume, a download from the bucket), so
retention waits for nothing long. The source database's data is never read or written (its size is asked, for
the room a backup falling due meanwhile needs).
"""

from datetime import datetime, timezone
import os
from pathlib import Path
import shutil
import sys
import tempfile
import time
from typing import Any

import structlog

from jobs import drill as drilling, restore as restoring, selection
from jobs.artifacts import BackupSet, temp_prefix
from jobs.backups import Backup, list_backups
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.engines import Source
from jobs.drill import postgres
from jobs.drill.pg_target import OperatorTarget
from jobs.engines.pg_connect import Connection
from jobs.errors import Cancelled, IntegrityError, JobError, SpaceError
from jobs.pipeline import required_space
from jobs.selection import Purpose
from jobs.volume import explain, room_problem
from worker import lock
from worker.context import EXIT_FAILED, Context
from worker.output import print_json, report_failure, say
from worker.runs import Outcome, fail_if_any_failed, run_job
from worker.selection import fetch, reading, workdir

log = structlog.get_logger("worker.actions.drill")
JOB = "drill"
LOCK = "drill"  # `.drill.lock` in BACKUP_DIR: one drill at a time
DAMAGED = ("a disaster would find it so: take a backup now (`backup`) so that a sound copy exists, then find out "
           "what damaged this one (`list --remote` shows the sizes)")


def _side(ctx: Context, local: bool) -> tuple[Destination, bool]:
    """Return where drills fetch from (the bucket, else the volume) and whether that is the bucket."""
    remote = None if local else ctx.remote()
    return (remote, True) if remote is not None else (ctx.local, False)


def _copy(ctx: Context, destination: Destination, backup: Backup, scratch: Path) -> Path:
    """Return the drill's own copy of the artifact in `scratch`: a download from the bucket, or a hard link (else
    a copy) of the file on the volume, so that retention may delete the original meanwhile."""
    if not isinstance(destination, LocalDestination):
        return fetch(ctx, destination, backup, scratch)
    original, copy = destination.path(backup.artifact), scratch / backup.artifact
    try:
        os.link(original, copy)
    except FileNotFoundError:
        raise IntegrityError(f"{backup.artifact} is missing; its manifest is there but the artifact is not") from None
    except OSError:
        shutil.copyfile(original, copy)
    return copy


def backup_room(source: Source, backup: Backup) -> int:
    """Return the bytes a backup of `source` that falls due during its drill would need at its preflight, judged
    as that preflight judges (`pipeline.required_space`), on the larger of the source's size estimate (a stat for
    SQLite, the database's size for PostgreSQL, the dataset's for Redis) and the raw size of its newest backup
    (`backup`); on the latter alone when the source cannot be reached (a drill from the bucket on another machine)."""
    raw = backup.manifest.get("raw_size")
    estimate = raw if isinstance(raw, int) and raw > 0 else backup.size
    try:
        estimate = max(estimate, source.estimate_size())
    except (JobError, OSError) as error:
        log.info("drill.source_size_unknown", reason=str(error)[:200])
    return required_space(estimate, [backup], source.snapshot_on_disk)


def _require_room(ctx: Context, scratch: Path, source: Source, backup: Backup, remote: bool) -> None:
    """Raise SpaceError, with the numbers, when the backup volume cannot take the drill's copy of the artifact
    (downloaded from the bucket) and its unpacked copy, and beside them a backup of the set that falls due
    meanwhile (a due backup is never refused because of a drill), and still keep BACKUP_MIN_FREE free."""
    usage = shutil.disk_usage(scratch)
    needed = (backup.size if remote else 0) + restoring.raw_needs(backup) + backup_room(source, backup)
    problem = room_problem(usage.free, usage.total, needed, ctx.config.min_free)
    if problem:
        raise SpaceError(f"{ctx.config.backup_dir} {problem} to be drilled (the fetched artifact and its unpacked copy, "
                         "and room for a backup of the set that may fall due meanwhile); free space or grow the volume"
                         + (", or lower BACKUP_MIN_FREE" if "BACKUP_MIN_FREE" in problem else ""))


def drill_one(ctx: Context, source: Source, local: bool) -> dict[str, Any]:
    """Drill the newest sound backup of one configured set; return its row: `outcome`, `stage` and `reason` (None
    on success), the backup, where it came from, the checks that passed and what was compared. Raise only
    Cancelled: any other failure is this set's alone."""
    started = time.monotonic()
    destination, remote = _side(ctx, local)
    backup_set = BackupSet(source.name(), source.kind)
    row: dict[str, Any] = {"outcome": None, "stage": None, "reason": None, "location": destination.location}
    with structlog.contextvars.bound_contextvars(source=source.name()):
        try:
            scratch_root = workdir(ctx)  # scratch files live on the backup volume
            with tempfile.TemporaryDirectory(prefix=temp_prefix() + "drill-", dir=scratch_root) as temporary:
                scratch = Path(temporary)
                with reading(ctx, remote):
                    backups, problems = list_backups(destination, backup_set, ctx.cancel)
                    for problem in problems:
                        log.warning("drill.skipped_file", location=destination.location, problem=problem)
                    where = f"the set {backup_set} in {destination.url()}"
                    backup, _, notes = selection.latest(backups, Purpose.RESTORE, datetime.now(timezone.utc), None,
                                                        False, where, DAMAGED)
                    for note in notes:
                        log.warning("drill.passed_over", note=note)
                    row["backup"] = backup.id
                    _require_room(ctx, scratch, source, backup, remote)
                    artifact = _copy(ctx, destination, backup, scratch)
                drilled = drilling.drill(artifact, backup, source, scratch, ctx.cancel,
                                         ctx.config.encryption_identities, operator_target(ctx))
                row.update(checks=drilled.checks, compared=drilled.compared, measured_total=_total(drilled.measured))
        except Cancelled:
            raise
        except JobError as error:
            row.update({**error.fields, "stage": error.stage, "reason": str(error)})
        except OSError as error:
            row.update(stage="store", reason=explain(error))
        except Exception as error:  # this set's boundary: one set's bug must not stop the others' drills
            row.update(stage="internal", reason=f"unexpected {type(error).__name__}: {error}; this is a bug, please report it with the log")
            log.error("drill.source_crashed", exc_info=True)
        row["outcome"] = "failed" if row["stage"] else "succeeded"
        row["duration_s"] = round(time.monotonic() - started, 3)
        if row["outcome"] == "succeeded":
            log.info("drill.source_succeeded", backup=row.get("backup"), compared=row.get("compared"), duration_s=row["duration_s"])
        else:
            log.error("drill.source_failed", backup=row.get("backup"), stage=row["stage"], reason=row["reason"],
                      duration_s=row["duration_s"])
    return row


def _total(measured: dict[str, Any]) -> int:
    if "databases" in measured:
        return sum(db.get("keys", 0) for db in measured["databases"].values())
    return int(measured.get("total", 0))


def operator_target(ctx: Context) -> OperatorTarget | None:
    """Return DRILL_TARGET_URL with the configured PostgreSQL sources it must never be, or None when unset."""
    if not ctx.config.drill_target_url:
        return None
    sources = tuple(each.source.sql_database() for each in ctx.config.sources if each.source.kind == postgres.KIND)
    return OperatorTarget(ctx.config.drill_target_url, tuple(conn for conn in sources if isinstance(conn, Connection)))


def drill_sources(ctx: Context, sources: list[Source], local: bool) -> dict[str, Any]:
    """Drill each set in turn, holding the `drill` lock (one drill at a time: they share DRILL_TARGET_URL and the
    volume's room); return the run's fields. Raise BusyError when another drill runs, JobError (with the fields)
    if any set failed: with one set its own stage and reason, with several the failed sets named."""
    with lock.exclusive(ctx.config.backup_dir, LOCK, "drill", busy="another drill is running"):
        return _drill_each(ctx, sources, local)


def _drill_each(ctx: Context, sources: list[Source], local: bool) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for source in sources:
        if ctx.cancel.is_set():
            raise Cancelled(f"drill cancelled before {source.name()}", fields={"sources": rows})
        try:
            rows[source.name()] = drill_one(ctx, source, local)
        except Cancelled as error:
            error.fields = {**error.fields, "sources": rows}
            raise
    fields: dict[str, Any] = {"sources": rows,
                              "failed_sources": [name for name, row in rows.items() if row["outcome"] == "failed"]}
    fail_if_any_failed(rows, fields, "drills")
    return fields


def drill_job(ctx: Context, local: bool = False, only: list[str] | None = None) -> Outcome:
    """Drill every configured set (or the sets in `only`) as the job `drill`."""
    return run_job(JOB, ctx.catalog, lambda: drill_sources(ctx, ctx.sources(only), local))


def cmd_drill(ctx: Context, source_name: str | None, local: bool, as_json: bool = False) -> int:
    only = [ctx.source(source_name).name()] if source_name else None  # an unknown --source is a usage error
    ctx.sources()  # no source configured is a usage error, before any run starts
    outcome = drill_job(ctx, local, only)
    if as_json:
        print_json(outcome)
        return report_failure(outcome)
    rows = outcome.fields.get("sources") or {}
    for name, row in rows.items():
        if row["outcome"] == "succeeded":
            say(f"{name}: drill of {row['backup']} from {row['location']} passed: {row['compared']}")
        else:
            about = f" of {row['backup']}" if row.get("backup") else ""
            print(f"{name}: drill{about} failed at stage {row['stage']}: {row['reason']}", file=sys.stderr, flush=True)
    if not rows:
        return report_failure(outcome)
    return 0 if outcome.ok else EXIT_FAILED
