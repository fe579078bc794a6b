"""Restore at start in the worker (RESTORE_ON_START=if-missing): `run` calls `restore_at_start` before the checks
that read the database (RETENTION_RULES), before the schedule (and its catch-up backup) and before `--exec`
starts the app.

Each configured set is handled on its own (the work is `jobs.recover`): a database that holds data is left
alone; a lost one with no backup anywhere (a first deploy) starts as it is; a lost one with backups is restored
as a `restore` job run (start and outcome events, a catalog row, notifications and pings), under the set's lock,
and its success logs `restore.on_start` with the backup, where it came from and, when another source made it,
both identities: the source then takes the set over (`jobs.identity.adopt`); another source's backup only when
that source looks gone (`jobs.recover.own_backups`: its newest backup is older than FRESHNESS_LIMIT). Redis sets
are skipped (their RDB is loaded by hand). When any set could not be restored, `restore_at_start` raises one JobError naming each, so that
`run` exits 1 before anything starts: never an app on an empty database; the service's restart policy tries
again, and the log says why.
"""

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import structlog

from jobs import guard, identity, recover, selection
from jobs.artifacts import BackupSet
from jobs.engines import Source
from jobs.errors import Cancelled, JobError, SourceError
from jobs.selection import Purpose
from worker.context import Context
from worker.selection import reading, workdir
from worker.lock import for_set
from worker.runs import Outcome, run_job

log = structlog.get_logger("worker.actions.recover")

IF_MISSING = "if-missing"
WAIT_LOG_EVERY_S = 10.0  # while a server does not answer, a log line at the first try and then this often


def restore_at_start(ctx: Context) -> None:
    """Given the context of `run`, restore every configured set whose database is lost (RESTORE_ON_START=if-missing;
    nothing with `never`). Raise JobError naming every set that could not be restored (exit 1), Cancelled when
    the worker is told to stop meanwhile."""
    if ctx.config.restore_on_start != IF_MISSING:
        return
    failed: list[tuple[str, Outcome]] = []
    for source in ctx.sources():
        outcome = _restore_one(ctx, source)
        if ctx.cancel.is_set():
            raise Cancelled("the worker is stopping; restore at start was interrupted, so nothing else was started")
        if outcome is not None and not outcome.ok:
            failed.append((source.name(), outcome))
    if not failed:
        return
    if len(failed) == 1:
        ((name, outcome),) = failed
        what, why = f"restore at start of the set {name}", _clause(outcome.reason)
    else:
        what = f"restore at start of {len(failed)} sets"
        why = "; ".join(f"{name}: {_clause(outcome.reason)}" for name, outcome in failed)
    raise JobError(f"{what} failed, so neither the backups nor the app were started: {why} (to start without "
                   "restoring, set RESTORE_ON_START=never)", stage=failed[0][1].stage)


def _clause(reason: str | None) -> str:
    return (reason or "no reason recorded").rstrip(" .")


def _restore_one(ctx: Context, source: Source) -> Outcome | None:
    """Restore one set if its database is lost, or holds tables without a row while the set's newest backup of
    this source records rows (an app that created its schema at start); return the restore run's outcome, or
    None when no restore was needed (it holds data, Redis) or possible (no backup anywhere: a first deploy). A
    check or a listing that fails is recorded (and notified) as the restore run's failure."""
    name = source.name()
    refusal = source.restore_refusal()  # an engine whose data is loaded by hand (Redis)
    if refusal:
        log.info("restore.on_start_skipped", set=name, reason=f"not restored at start: {refusal}")
        return None
    try:
        why = recover.wait_missing(source, ctx.cancel, on_wait=_waiting(name))
    except Cancelled:
        raise
    except JobError as error:  # the server never answered, or refused us: whether it is lost cannot be told
        return run_job("restore", ctx.catalog, partial(_fail, name, error))
    emptied = False
    if why is None:
        try:
            holds = source.has_rows()
        except JobError as error:  # it answered a moment ago; the catch-up backup will say what is wrong
            log.warning("restore.on_start_not_needed", set=name, reason=f"whether it holds rows could not be told: {error}")
            return None
        if holds:
            log.info("restore.on_start_not_needed", set=name, reason="the database holds data")
            return None
        emptied = True  # tables without a row: an app that created its schema at start, before the restore
        why = f"{source.target()} has tables but no row in any of them"
    try:
        with for_set(ctx.config.backup_dir, name, "restore at start"), reading(ctx, remote=False):
            found = recover.gather(ctx.local, ctx.remote(), BackupSet(name, source.kind), ctx.cancel)
            if not found.backups and not found.problems:
                if emptied:
                    log.info("restore.on_start_not_needed", set=name, reason=f"{why}, and the set has no backup")
                    return None
                log.warning("restore.on_start_no_backup", set=name, reason=why,
                            detail="no backup of the set is on the volume or in the bucket (a first deploy?), so it "
                                   "starts as it is; if backups should be there, check S3_BUCKET, S3_PREFIX and BACKUP_NAME")
                return None
            mine, live = _own(ctx, source, found)
            if emptied:
                newest = selection.newest(mine.backups, Purpose.RESTORE, datetime.now(timezone.utc))
                if newest is None or not (guard.held(newest.manifest) or 0) > 0:
                    log.info("restore.on_start_not_needed", set=name,
                             reason=f"{why}, and the set's newest backup of this source records no rows either")
                    return None
            return run_job("restore", ctx.catalog, partial(_work, ctx, source, why, found, mine, live, emptied))
    except Cancelled:
        raise
    except JobError as error:  # the set's lock is taken (a manual run), or the bucket cannot be listed
        return run_job("restore", ctx.catalog, partial(_fail, name, error))


def _own(ctx: Context, source: Source, found: recover.Found) -> tuple[recover.Found, list[recover.Live]]:
    """Return the set's backups a restore at start may take and the live sources whose backups it may not."""
    backup_set = BackupSet(source.name(), source.kind)
    return recover.own_backups(found, identity.of(source, ctx.config.backup_dir),
                               identity.adopted(ctx.config.backup_dir, backup_set), ctx.config.freshness_limit,
                               datetime.now(timezone.utc))


def _fail(name: str, error: JobError) -> NoReturn:
    """The `restore` run of a set whose restore could not even begin: raise its error, marked as at start."""
    error.fields = {**error.fields, "on_start": True, "set": name}
    raise error


def _work(ctx: Context, source: Source, why: str, found: recover.Found, mine: recover.Found,
          live: list[recover.Live], emptied: bool) -> dict[str, Any]:
    """The `restore` run of one set at start: restore (over the database when it is `emptied`: tables without
    rows), take the set over when another source made the backup, return the fields of `restore.on_start`. Raise
    the JobError that stops the start, with `on_start` and `set`."""
    name = source.name()
    ours = identity.of(source, ctx.config.backup_dir)
    backup_set = BackupSet(name, source.kind)
    try:
        if live and not mine.backups:
            raise SourceError(recover.refusal(live, found, ours, ctx.config.freshness_limit, datetime.now(timezone.utc)),
                              stage="restore")
        restored = recover.restore_missing(source, mine, workdir(ctx), ctx.cancel, over=emptied,
                                           identities=ctx.config.encryption_identities)
    except JobError as error:
        _fail(name, error)
    restored = replace(restored, notes=[*recover.passed_over_live(live, restored.backup), *restored.notes])
    removed: list[Path] = []
    if restored.safety:  # restored over a SQLite file: its copy is recorded, older ones beyond BACKUP_KEEP_MIN go
        removed, _ = source.tidy_copies(Path(restored.safety), ctx.config.keep_min, ctx.config.backup_dir)
    for note in restored.notes:
        log.warning("restore.on_start_passed_over", set=name, note=note)
    backup = restored.backup
    fields: dict[str, Any] = {"on_start": True, "set": name, "backup": backup.id, "location": restored.location,
                              "created_at": backup.manifest.get("created_at"), "restored_to": restored.target,
                              "reason": why, "checks": restored.checks,
                              **({"safety_copy": restored.safety} if restored.safety else {}),
                              **({"safety_copies_removed": [str(path) for path in removed]} if removed else {}),
                              **({"passed_over": restored.notes} if restored.notes else {})}
    theirs = identity.recorded(backup.manifest.get("source"))
    if theirs is not None and not identity.same(theirs, ours):
        fields.update(backup_made_by=identity.describe(theirs), restored_into=identity.describe(ours))
        identity.adopt(ctx.config.backup_dir, backup_set, theirs)  # its next backups are its own
    log.info("restore.on_start", **fields)
    return fields


def _waiting(name: str) -> Callable[[Exception, float], None]:
    """Return the `on_wait` of `recover.wait_missing`: a warning at the first try and then every WAIT_LOG_EVERY_S."""
    logged: list[float] = []

    def tell(error: Exception, waited: float) -> None:
        if not logged or waited - logged[-1] >= WAIT_LOG_EVERY_S:
            logged.append(waited)
            log.warning("restore.on_start_waiting", set=name, reason=str(error), waited_s=round(waited, 1),
                        limit_s=recover.SERVER_WAIT_S,
                        detail="the database server does not answer yet; it is asked again every second")

    return tell
