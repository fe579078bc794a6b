"""`restore`: fetch, verify, then restore a backup: to a new file, over the live database, or into the
PostgreSQL database at `--target-url`.

Over a live SQLite file, the engine saves a safety copy first. Over a live PostgreSQL database, a safety backup
is taken first: an ordinary backup of the set through the pipeline (manifest `"reason": "pre-restore"`), its id
printed before anything changes. pg_restore runs in one transaction, so a restore that fails changes nothing.
"""

from datetime import datetime, timezone
from pathlib import Path
import signal
import sys
import tempfile
from typing import Any

import structlog

from jobs import engines, identity, offsite, pipeline, restore as restoring
from jobs.artifacts import BackupSet, temp_prefix
from jobs.backups import Backup
from jobs.engines import Source
from jobs.errors import Cancelled, JobError, SourceError
from worker.context import Context, UsageError
from worker.output import human_age, report_failure, say
from worker.selection import fetch, reading, scratch_dir, wanted, where, workdir
from worker.lock import for_set
from worker.runs import run_job
from worker.text import human_size

log = structlog.get_logger("worker.actions.restore")

CANCELLED = "restore cancelled; nothing was changed"
PRE_RESTORE = "pre-restore"  # the manifest `reason` of the safety backup taken before a restore over a server


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


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def kind_problem(backup_kind: str | None, ident: str, target: Source) -> str | None:
    """Return the usage error for restoring a backup of `backup_kind` into the --target-url `target`, or None
    when the kinds match (or the kind is not known yet)."""
    if backup_kind is None or backup_kind == target.kind:
        return None
    return (f"{ident} is a backup of kind {backup_kind}, and the --target-url database {target.target()} takes "
            f"{target.kind} backups only; write it to a new file with --to PATH instead")


def cmd_restore(ctx: Context, ident: str | None, from_s3: bool, to: Path | None, target_url: str | None,
                assume_yes: bool, fallback: bool = False, source_name: str | None = None) -> int:
    target: Source | None = None  # --target-url: a database that is not a configured source
    if target_url:
        try:
            target = engines.open_target(target_url, ctx.cwd)  # the app's SQLAlchemy URL names the same database
        except ValueError as error:
            raise UsageError(str(error)) from None
    destination, location = where(ctx, from_s3)
    if to is not None:
        to = to.resolve()
        problem = restoring.new_file_problem(to)
        if problem:
            raise UsageError(problem)
    # refuses Redis before anything is fetched
    source = None if to or target else ctx.restore_source(source_name, ident)
    request = wanted(ctx, destination, location, ident, source_name)
    if target is not None and ident and request.backup_set is not None:
        problem = kind_problem(request.backup_set.kind, ident, target)
        if problem:
            raise UsageError(problem)
    unpack_in = to.parent if to else scratch_dir(ctx)
    maybe = " (or, if it proves damaged, the newest intact older one)" if fallback else ""
    warning: str | None = None  # shown before the confirmation; not repeated when the restore notes it again

    with reading(ctx, from_s3):
        chosen: Backup | None = None
        if not from_s3 or source is not None or target is not None:
            # The newest backup, judged without hashing; with --fallback on the volume, the newest that proves intact.
            prove = (lambda backup: restoring.prove_file(destination.path(backup.artifact), backup, ctx.cancel)) \
                if fallback and not from_s3 else None
            chosen = request.pick(destination, location, ctx, fallback, prove)
        if target is not None:
            problem = kind_problem(chosen.kind, chosen.id, target)
            if problem:
                raise UsageError(problem)
            warning = target.restore_warning(chosen.manifest.get("versions") or {})  # reaches the target
            if warning:
                _stderr(f"warning: {warning}")
            confirm(f"This restores the backup {describe(chosen, location)}{maybe} into the database "
                    f"{target.target()}, replacing the tables and other objects the backup holds "
                    "(objects it does not hold are left alone; one transaction: a failure changes nothing)", assume_yes)
        elif source is not None:
            live = BackupSet(source.name(), source.kind)
            if chosen.backup_set != live:
                raise UsageError(f"{chosen.id} is a backup of the set {chosen.backup_set}, not of {live} that BACKUP_SOURCE "
                                 f"holds; restore it to a new file with --to PATH")
            foreign = require_owner(ctx, chosen, source, explicit=ident is not None, error=UsageError)
            saved = ("A safety backup of its current state is taken first (its id is printed)" if source.safety_backup
                     else "Its current content is saved first as a safety copy")
            takeover = (f" The backup was made by {identity.describe(foreign)}, not by this source: restoring it makes "
                        "this source take the set over." if foreign else "")
            confirm(f"This replaces the live database {source.target()} with the backup {describe(chosen, location)}{maybe}. "
                    f"{saved}.{takeover} Stop the app's writers before you go on; open connections will see the restored data",
                    assume_yes)

        def work() -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix=temp_prefix() + "restore-", dir=unpack_in) as scratch:
                if from_s3:  # the backup confirmed, unless --fallback may take an older intact one
                    pick = ident or (chosen.id if chosen is not None and not fallback else None)
                    backup, artifact, notes = offsite.pick_restorable(destination, Path(scratch), ctx.cancel, pick,
                                                                      fallback, request.backup_set)
                    for note in notes:
                        log.warning("restore.note", note=note)
                else:
                    backup = chosen
                    artifact = fetch(ctx, destination, backup, Path(scratch))
                log.info("restore.selected", backup=backup.id, location=destination.location, created_at=backup.manifest["created_at"])
                if to is not None:  # a new file: the raw snapshot itself, whatever the engine
                    checks = restoring.restore_to_file(artifact, backup, to, ctx.cancel, ctx.config.encryption_identities)
                    return {"backup": backup.id, "restored_to": str(to), "checks": checks}
                if source is not None:
                    return restore_over_source(ctx, artifact, backup, source, explicit=ident is not None)
                return restore_into_target(ctx, artifact, backup, target, shown=warning)

        outcome = run_job("restore", ctx.catalog, work)
    if outcome.ok:
        say(f"restored {outcome.fields['backup']} from {destination.location} to {outcome.fields['restored_to']} "
            f"({', '.join(outcome.fields['checks'])} passed)")
        if "safety_copy" in outcome.fields:
            say(f"the previous database was saved as {outcome.fields['safety_copy']}")
        for removed in outcome.fields.get("safety_copies_removed", []):
            kept = ", ".join(outcome.fields["safety_copies_kept"]) or "none"
            say(f"removed the older safety copy {removed} (BACKUP_KEEP_MIN={ctx.config.keep_min}: kept {kept}, "
                "and the one just made)")
        if "taken_over_from" in outcome.fields:
            say(f"this source now owns the backup set (it was {outcome.fields['taken_over_from']}'s)")
        if "safety_backup" in outcome.fields:
            say(f"the previous state of the database is in the safety backup {outcome.fields['safety_backup']} "
                f"(restore it with `python -m worker restore {outcome.fields['safety_backup']}`)")
    return report_failure(outcome)


def require_owner(ctx: Context, backup: Backup, source: Source, explicit: bool,
                  error: type[Exception]) -> dict[str, str] | None:
    """Given a backup about to be restored over the live database of `source`, return the identity of the other
    source that made it when that is allowed (an explicit id: this source takes the set over), None when it is
    this source's own (or records no maker). Raise `error` naming both when `--latest` would restore another
    source's backup (jobs.identity)."""
    theirs = identity.recorded(backup.manifest.get("source"))
    ours = identity.of(source, ctx.config.backup_dir)
    taken = identity.adopted(ctx.config.backup_dir, BackupSet(source.name(), source.kind))
    if theirs is None or identity.same(theirs, ours) or identity.taken_over(theirs, backup.created_at, taken):
        return None
    if explicit:
        return theirs
    raise error(f"the newest backup of the set, {backup.id}, was made by {identity.describe(theirs)}, not by "
                f"{identity.describe(ours)} that this worker restores into; --latest never restores another source's "
                f"backup over a live database: to do it on purpose, name it (`python -m worker restore {backup.id} "
                "--yes`; this source then takes the set over), or restore it to a new file with --to PATH")


def _warn(shown: str | None = None):
    """Return a `notify` for a restore that prints each note as a warning, except `shown` (already printed)."""
    return lambda note: None if note == shown else _stderr(f"warning: {note}")


def restore_into_target(ctx: Context, artifact: Path, backup: Backup, target: Source, shown: str | None) -> dict[str, Any]:
    """`--target-url`: prove the artifact (checksum first, then the engine's check reading every block), then
    restore it into `target`, a database that is not a configured source (no safety backup: it is the user's
    choice of target); return the run's fields. Warnings not shown yet go to stderr."""
    problem = kind_problem(backup.kind, backup.id, target)
    if problem:
        raise SourceError(problem, stage="restore")
    _, checks = restoring.restore_over(artifact, backup, target, scratch_dir(ctx), ctx.cancel, notify=_warn(shown),
                                       identities=ctx.config.encryption_identities)
    return {"backup": backup.id, "restored_to": target.target(), "checks": checks}


def restore_over_source(ctx: Context, artifact: Path, backup: Backup, source: Source, explicit: bool) -> dict[str, Any]:
    """Restore the backup over the live database of the configured `source`, keeping what it replaces the way the
    engine declares (`Source.safety_backup`): a safety backup of the set taken first, or the engine's own safety
    copy (the older ones beyond BACKUP_KEEP_MIN removed once it succeeded). Another source's backup, named
    explicitly, makes this source take the set over. Return the run's fields."""
    live = BackupSet(source.name(), source.kind)
    if backup.backup_set != live:
        raise SourceError(f"{backup.id} is a backup of the set {backup.backup_set}, not of {live}", stage="restore")
    foreign = require_owner(ctx, backup, source, explicit=explicit, error=SourceError)
    if source.safety_backup:
        fields = _restore_after_safety_backup(ctx, artifact, backup, source)
    else:
        safety, checks = restoring.restore_over(artifact, backup, source, workdir(ctx), ctx.cancel, notify=_stderr,
                                                identities=ctx.config.encryption_identities)
        removed, kept = source.tidy_copies(safety, ctx.config.keep_min, ctx.config.backup_dir) if safety else ([], [])
        fields = {"backup": backup.id, "restored_to": source.target(), "checks": checks,
                  **({"safety_copy": str(safety)} if safety else {}),
                  **({"safety_copies_removed": [str(path) for path in removed],
                      "safety_copies_kept": [str(path) for path in kept]} if removed else {})}
    if foreign:
        identity.adopt(ctx.config.backup_dir, live, foreign)
        fields["taken_over_from"] = identity.describe(foreign)
    return fields


def _restore_after_safety_backup(ctx: Context, artifact: Path, backup: Backup, source: Source) -> dict[str, Any]:
    """Prove the artifact, take a safety backup of the live database (an ordinary backup of the set, manifest
    `"reason": "pre-restore"`, its id printed before anything changes), then restore into it (in one transaction
    for PostgreSQL); return the run's fields. A failure names the safety backup and says nothing changed."""
    with restoring.proven_raw(artifact, backup, workdir(ctx), ctx.cancel,
                              identities=ctx.config.encryption_identities) as (raw, checks):
        try:
            with for_set(ctx.config.backup_dir, source.name(), "pre-restore safety backup"):
                safety = pipeline.take_backup(source, ctx.settings(upload=False), ctx.cancel, reason=PRE_RESTORE)
        except JobError as error:
            raise type(error)(f"the safety backup of {source.target()} before the restore failed, so nothing was "
                              f"restored and the database is unchanged: {error}", stage="safety-backup") from None
        log.info("restore.safety_backup", safety_backup=safety["id"], artifact=safety["artifact"])
        _stderr(f"safety backup {safety['id']} holds the current state of {source.target()}; restoring {backup.id} now")
        try:
            source.restore(raw, ctx.cancel, notify=_warn())
        except (SourceError, Cancelled) as error:
            raise type(error)(f"{str(error).rstrip(';. ')}; the safety backup {safety['id']} holds the state from before the restore",
                              stage=error.stage) from None
    return {"backup": backup.id, "restored_to": source.target(), "checks": checks, "safety_backup": safety["id"]}
