"""`list`: backups newest first, local and (with --remote, or when the volume has none) the bucket's. Only the
configured backup sets unless --all."""

from datetime import datetime, timezone
import json

import structlog

from jobs import selection
from jobs.artifacts import BackupSet
from jobs.backups import Backup, list_backups, sets_in
from jobs.destinations import Destination
from worker.context import EXIT_OK, Context, UsageError
from worker.output import human_age, say
from worker.text import human_size

log = structlog.get_logger("worker.actions.listing")


def backups_of(ctx: Context, destination: Destination, everything: bool) -> list[Backup]:
    """Return the destination's backups that `list` shows: the configured sets' (see Context.scope), or every
    set's with `everything`; skipped files of those sets are logged."""
    chosen: list[BackupSet] | None = None if everything else ctx.scope(sets_in(destination, ctx.cancel))
    found: list[Backup] = []
    for backup_set in chosen if chosen is not None else [None]:
        backups, problems = list_backups(destination, backup_set, ctx.cancel)
        for problem in problems:
            log.warning("list.skipped_file", location=destination.location, problem=problem)
        found += backups
    return found


def _merged(ctx: Context, remote_too: bool, everything: bool) -> list[tuple[Backup, str]]:
    """Return (backup, location) pairs newest first; location is `local`, `s3` or `both`."""
    local = backups_of(ctx, ctx.local, everything)
    rows: dict[str, tuple[Backup, str]] = {b.id: (b, "local") for b in local}
    remote = ctx.remote() if (remote_too or not local) else None
    if remote is not None:
        for backup in backups_of(ctx, remote, everything):
            rows[backup.id] = (rows[backup.id][0], "both") if backup.id in rows else (backup, "s3")
    return sorted(rows.values(), key=lambda row: (row[0].created_at, row[0].id), reverse=True)


def cmd_list(ctx: Context, as_json: bool, remote: bool, everything: bool = False) -> int:
    if remote and ctx.config.s3 is None:
        raise UsageError("--remote needs S3_BUCKET (and its credentials) to be set")
    rows = _merged(ctx, remote, everything)
    if as_json:
        now = datetime.now(timezone.utc)
        say(json.dumps([{**backup.manifest, "location": location, "flags": selection.flags(backup, now)}
                        for backup, location in rows], indent=2, sort_keys=True))
        return EXIT_OK
    if not rows:
        scope = "" if everything or not ctx.backup_sets() else f" of the set {', '.join(map(str, ctx.backup_sets()))} (--all shows every set)"
        say(f"no backups{scope} in {ctx.config.backup_dir}" + (" or the bucket" if ctx.config.s3 else ""))
        return EXIT_OK
    header = f"{'ID':<44} {'CREATED (UTC)':<21} {'AGE':>8} {'SIZE':>10} {'RAW':>10}  {'VERIFIED':<28} LOCATION"
    say(header)
    now = datetime.now(timezone.utc)
    for backup, location in rows:
        row = backup.manifest
        age = human_age((now - backup.created_at).total_seconds())
        verified = row["verified"].get("check", "yes") if isinstance(row.get("verified"), dict) else "no"
        raw = row.get("raw_size")
        notes = {"pre-restore": "pre-restore safety backup", "future": "DATED IN THE FUTURE: not counted",
                 "damaged": "DAMAGED: " + (backup.damage or ""), "encrypted": "encrypted",
                 "shrunk": "SHRUNK to under a tenth of the previous backup: restore --latest passes over it",
                 "empty_allowed": "EMPTY source, let through by BACKUP_ALLOW_EMPTY: restore --latest passes over it"}
        flagged = [notes[flag] for flag in selection.flags(backup, now)]
        if flagged:
            location += f" ({'; '.join(flagged)})"
        say(f"{backup.id:<44} {row['created_at']:<21} {age:>8} {human_size(backup.size):>10} "
            f"{human_size(raw if isinstance(raw, int) else None):>10}  {verified:<28} {location}")
    return EXIT_OK
