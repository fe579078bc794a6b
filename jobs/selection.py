"""Which backups count, and which one is "the newest": the one answer every caller asks.

Restore and verify (`--latest`), freshness (`status`, `/healthz`, `/metrics`), the catch-up at start and
retention's `BACKUP_KEEP_MIN` slots all choose through this module, so that they cannot disagree.

- A backup is judged on what can be told without reading its artifact: a valid manifest that records a passed
  check, an artifact of the size the manifest records, and a date that is not in the future. The newest such
  backup is "the newest". Nothing here hashes.
- Dated in the future means its artifact name's stamp or its manifest's `created_at` lies more than
  FUTURE_TOLERANCE ahead of now: a backup written while the clock was wrong. It is never the newest, never
  fresh, never fills a retention slot, and `flags` reports it.
- Proving a backup (its SHA-256) is the caller's work; `latest` runs that proof on the newest and, when it fails,
  raises an error naming it, unless `fallback` asks for the newest intact older one. Nothing falls back silently.
- A pre-restore safety backup (manifest `reason`) holds the state a restore replaced: restores of the latest pass
  over it (restoring the latest twice would otherwise undo the first restore) and it fills no retention slot.
- A backup whose manifest carries a flag in FLAGGED (`shrunk`: it is under a tenth of the set's previous backup;
  `empty_allowed`: an empty source let through by BACKUP_ALLOW_EMPTY) counts for freshness and can be restored
  by id, but restores of the latest pass over it (saying so) and it never fills a retention slot: the backups from
  before stay until an operator looks.
"""

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from enum import Enum
from typing import TypeVar

from jobs.artifacts import is_encrypted as is_encrypted_name
from jobs.backups import Backup
from jobs.errors import IntegrityError, NotFound, WrongIdentity

FUTURE_TOLERANCE = timedelta(minutes=5)
FLAGGED = ("shrunk", "empty_allowed")  # manifest `flags` that keep a backup from being "the latest" to restore
PRE_RESTORE = "pre-restore"  # the manifest `reason` of a safety backup taken before a restore

T = TypeVar("T")


class Purpose(Enum):
    """What a choice of backups is for; each purpose counts the same sound backups."""

    RESTORE = "restore"
    VERIFY = "verify"
    FRESHNESS = "freshness"
    CATCH_UP = "catch-up"
    RETENTION = "retention"




def stamp_of(backup: Backup) -> datetime:
    """Return the UTC time in the backup's artifact name (an encrypted one's too)."""
    parts = backup.parts
    if parts is None:
        raise ValueError(f"{backup.artifact} is not an artifact name")
    return parts.created_at


def is_encrypted(backup: Backup) -> bool:
    """Return whether the backup's artifact is encrypted: its name ends with `.age`, or its manifest records an
    `encryption`."""
    return is_encrypted_name(backup.artifact) or bool(backup.manifest.get("encryption"))


def is_future(backup: Backup, now: datetime) -> bool:
    """Return whether the backup's stamp or `created_at` lies more than FUTURE_TOLERANCE after `now`."""
    return max(backup.created_at, stamp_of(backup)) > now + FUTURE_TOLERANCE


def manifest_flags(backup: Backup) -> list[str]:
    """Return the flags the backup's manifest records (untrusted: only known strings count)."""
    flags = backup.manifest.get("flags")
    return [flag for flag in FLAGGED if isinstance(flags, list) and flag in flags]


def passed_over(backup: Backup, purpose: Purpose) -> str | None:
    """Return why a restore of the latest (or a retention slot) passes over this backup, or None."""
    if purpose not in (Purpose.RESTORE, Purpose.RETENTION):
        return None
    if backup.manifest.get("reason") == PRE_RESTORE:
        return "it is a safety backup taken before a restore (the state that restore replaced)"
    flags = manifest_flags(backup)
    if "empty_allowed" in flags:
        return "its source was empty (let through by BACKUP_ALLOW_EMPTY)"
    if "shrunk" in flags:
        return "it shrank to under a tenth of the set's previous backup"
    return None


def problem(backup: Backup, now: datetime, damaged: Sequence[str] = (), purpose: Purpose = Purpose.FRESHNESS) -> str | None:
    """Return why the backup does not count for `purpose` now (one clause), or None when it does. `damaged`
    holds the ids whose SHA-256 was found not to match."""
    if not backup.verified:
        return "its manifest records no passed check"
    if backup.damage:
        return f"it is damaged: {backup.damage}"
    if backup.id in damaged:
        return "it is damaged: its SHA-256 does not match its manifest"
    if is_future(backup, now):
        return f"it is dated in the future ({backup.manifest.get('created_at', stamp_of(backup).isoformat())}); the clock was wrong when it was written"
    return passed_over(backup, purpose)


def judge(backups: Sequence[Backup], purpose: Purpose, now: datetime, damaged: Sequence[str] = ()) -> dict[str, str | None]:
    """Given the backups of one set, return for each id why it does not count for `purpose` (`problem`), or None."""
    return {backup.id: problem(backup, now, damaged, purpose) for backup in backups}


def sound(backups: Sequence[Backup], purpose: Purpose, now: datetime, damaged: Sequence[str] = (),
          judged: dict[str, str | None] | None = None) -> list[Backup]:
    """Given the backups of one set (and, if already made, their `judge`ment), return those that count for
    `purpose`, newest first. Nothing is read."""
    judged = judged if judged is not None else judge(backups, purpose, now, damaged)
    counted = [backup for backup in backups if judged[backup.id] is None]
    return sorted(counted, key=lambda backup: (backup.created_at, backup.id), reverse=True)


def newest(backups: Sequence[Backup], purpose: Purpose, now: datetime) -> Backup | None:
    """Return the newest sound backup for `purpose` (see the module docstring), or None."""
    counted = sound(backups, purpose, now)
    return counted[0] if counted else None


def candidates(backups: Sequence[Backup], now: datetime) -> list[Backup]:
    """Return, newest first, the backups that may be "the newest" of their set before they are proven: a valid
    manifest with a passed check, not dated in the future, whatever their artifact (damage is found by the proof)."""
    found = [backup for backup in backups if backup.verified and not is_future(backup, now)]
    return sorted(found, key=lambda backup: (backup.created_at, backup.id), reverse=True)


def future(backups: Sequence[Backup], now: datetime) -> list[Backup]:
    """Return the backups dated in the future, newest first (to report them)."""
    return [backup for backup in backups if is_future(backup, now)]


def flags(backup: Backup, now: datetime) -> list[str]:
    """Return what a listing says about a backup besides its facts: `future`, `damaged`, `pre-restore`,
    `encrypted`, and the manifest's own flags (`shrunk`, `empty_allowed`)."""
    found = manifest_flags(backup)
    if is_encrypted(backup):
        found.append("encrypted")
    if is_future(backup, now):
        found.append("future")
    if backup.damage:
        found.append("damaged")
    if backup.manifest.get("reason") == PRE_RESTORE:
        found.append("pre-restore")
    return found


def latest(backups: Sequence[Backup], purpose: Purpose, now: datetime, prove: Callable[[Backup], T] | None,
           fallback: bool, where: str, advice: str | None = None) -> tuple[Backup, T | None, list[str]]:
    """Given the backups of one set at `where`, return the newest (the first of `candidates`), what `prove` returned
    for it, and notes on what was passed over.

    The newest is damaged when its artifact is missing or of the wrong size, or when `prove` raises
    IntegrityError. Then raise IntegrityError naming it and the next older one (or ending with `advice`, what the
    caller's user should do instead), unless `fallback`, which goes on to the newest intact older backup (each
    passed over is a note). Raise NotFound when there is no candidate."""
    notes: list[str] = []
    order = []
    for backup in candidates(backups, now):
        why = passed_over(backup, purpose)
        if why is None:
            order.append(backup)
        elif not order:  # only what is newer than the backup chosen is worth a word
            notes.append(f"passed over {backup.id}: {why}; restore it by its id if it is the one you want")
    if not order and notes:  # nothing but flagged backups: those are all there is
        order, notes = candidates(backups, now), ["every backup of the set is flagged (shrunk or empty); taking the newest"]
    if not order:
        ahead = future(backups, now)
        why = (f"; {len(ahead)} backup(s) dated in the future are not counted ({ahead[0].id}), check the clock"
               if ahead else "")
        raise NotFound(f"there are no verified backups in {where}{why}; run `python -m worker backup` first")
    for position, backup in enumerate(order):
        try:
            if backup.damage:
                raise IntegrityError(backup.damage)
            return backup, (prove(backup) if prove is not None else None), notes
        except WrongIdentity:  # the identity to fix, not damage: no older backup in its place
            raise
        except (IntegrityError, NotFound) as error:  # NotFound: listed a moment ago, gone now
            if not fallback:
                older = f" ({order[position + 1].id} is the next older one)" if position + 1 < len(order) else ""
                advice = advice or ("nothing was restored or verified in its place: run with --fallback to use the "
                                    f"newest intact older backup{older}, or name one by its id")
                raise IntegrityError(f"the newest backup {backup.id} in {where} is damaged: {error}; {advice}") from None
            notes.append(f"skipped {backup.id}: {error}")
    raise IntegrityError(f"none of the {len(order)} verified backups in {where} is intact ({'; '.join(notes)})")
