"""An empty database never becomes the newest backup of a set that holds data, and a backup that shrank is marked.

When a worker starts beside a freshly created (empty) database, the backup of that empty database must not become
the copy `restore --latest` brings back, nor fill the retention slots that keep the real ones. Two checks keep
that promise; the manifest's `flags` carry their verdicts to `jobs.selection`, which passes over a flagged backup
when it restores "the latest" and never lets one fill a retention slot, while it still counts for freshness.

- Before the snapshot (`require_data`): when the live source holds no rows (`Source.has_rows`) while the set's
  newest backup that a restore of the latest would take (`jobs.selection`, Purpose.RESTORE: flagged backups are
  passed over) holds data, the backup fails at stage preflight, naming that backup and the command that restores
  it, unless BACKUP_ALLOW_EMPTY=true; then it is taken and flagged `empty_allowed`. A first backup, or one after
  backups that hold nothing, is not refused: there is nothing to protect. A bucket that cannot be listed may hold
  data: an empty source is refused then too.
- After the snapshot (`shrank`): a backup whose raw size, or whose rows (Redis: keys) counted on the snapshot, are
  under a tenth of the set's previous backup's (the newest by date, whatever its flags, not dated in the future)
  is taken and flagged `shrunk`. Compared with the previous
  backup whatever its flags, a deliberate shrink is flagged once, not every night.

"Holds data": the manifest's row counts (`counts.total`, measured on the snapshot) or, for Redis, its key counts
(`rdb.keys`, counted in the RDB file as it streams; from a backup made before, INFO's count when above zero) are above zero. A manifest written before counts were
recorded holds data when its raw size is over what an empty database of its engine produces (EMPTY_RAW); when
unsure, it holds data: refusing an empty backup is the safe side, and BACKUP_ALLOW_EMPTY the way out.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from jobs import identity, selection
from jobs.backups import Backup
from jobs.engines import COUNTS, Source, rdb_keys
from jobs.errors import SourceError
from jobs.manifest import whole_number
from jobs.selection import Purpose

log = structlog.get_logger("jobs.guard")

EMPTY_ALLOWED, SHRUNK = "empty_allowed", "shrunk"  # manifest flags, see jobs.selection.FLAGGED
SHRINK_FACTOR = 10
# The largest raw snapshot of a database with no tables at all: SQLite one 4 KiB page (or an empty file), an
# archive of pg_dump 15 of an empty database 888 bytes. A Redis manifest without counts (uncounted, or from INFO
# before the walk, whose {} may be a user without INFO) has no threshold: unsure means it holds data.
EMPTY_RAW = {"sqlite": 4096, "pgdump": 1024}


@dataclass(frozen=True)
class Found:
    """A backup of the set and where it is: on the volume (`local`), or only in the bucket."""

    backup: Backup
    local: bool


def held(manifest: dict[str, Any]) -> int | None:
    """Return the rows (or Redis keys) a manifest records its backup holds, or None when it records none."""
    counts = manifest.get(COUNTS)
    if isinstance(counts, dict) and (total := whole_number(counts.get("total"))) is not None:
        return total
    return rdb_keys.held(manifest)


def holds_data(backup: Backup) -> bool:
    """Return whether a backup holds data (see the module docstring); unsure means yes."""
    rows = held(backup.manifest)
    if rows is not None:
        return rows > 0
    raw = backup.manifest.get("raw_size")
    return not isinstance(raw, int) or raw > EMPTY_RAW.get(backup.kind, 0)


def newest(local: Sequence[Backup], remote: Sequence[Backup], now: datetime) -> Found | None:
    """Return the set's newest backup that a restore of the latest would take, from the volume and the bucket
    (the volume's copy when both have it), or None."""
    on_volume = {backup.id for backup in local}
    merged = {**{backup.id: backup for backup in remote}, **{backup.id: backup for backup in local}}
    chosen = selection.newest(list(merged.values()), Purpose.RESTORE, now)
    return Found(chosen, chosen.id in on_volume) if chosen is not None else None


def restore_command(found: Found) -> str:
    """Return the command that restores `found` over the live database (Redis: to a file, loaded by hand)."""
    bucket = "" if found.local else " --from-s3"
    if found.backup.kind == "rdb":
        return (f"`python -m worker restore {found.backup.id}{bucket} --to /tmp/restore/dump.rdb` and load it as the "
                "README's Redis section says")
    return f"`python -m worker restore {found.backup.id}{bucket} --yes`"


def _unit(found: Found) -> str:
    return "keys" if found.backup.kind == "rdb" else "rows"


def _holds(found: Found) -> str:
    rows = held(found.backup.manifest)
    return f"holds {rows} {_unit(found)}" if rows is not None else "holds data (it records no row counts; its size says so)"


def refusal(what: str, found: Found, maker: Mapping[str, str] | None = None) -> str:
    """Return the one sentence a refused empty backup fails with; `maker`: the other source that made the newest
    backup, whose backup this source is never told to restore."""
    where = "" if found.local else " in the bucket"
    if maker is not None:
        return (f"{what} holds no {_unit(found)} while the set's newest backup {found.backup.id}{where} {_holds(found)}, "
                f"made by another source, {identity.describe(maker)}, so no backup was written: this set is not this source's; "
                "give this source a set of its own with BACKUP_NAME (or the bucket a prefix of its own with S3_PREFIX)")
    return (f"{what} holds no {_unit(found)} while the set's newest backup {found.backup.id}{where} {_holds(found)}, so no backup was "
            f"written, lest an empty copy become the one restored: to bring the data back run {restore_command(found)}; "
            "if the database is meant to be empty, set BACKUP_ALLOW_EMPTY=true")


def require_data(source: Source, what: str, local: Sequence[Backup], remote: Sequence[Backup], allow_empty: bool,
                 now: datetime, ours: Mapping[str, str] | None = None, adopted: Sequence[Mapping[str, Any]] = (),
                 remote_unknown: str | None = None) -> tuple[list[str], str | None]:
    """Given the live source (`what` names it for people) and the set's backups on the volume and in the bucket,
    return the flags the coming backup gets and a warning for people: ([], None) when it holds rows or nothing
    needs protecting, ([EMPTY_ALLOWED], warning) when BACKUP_ALLOW_EMPTY lets an empty source through.

    Raise SourceError (stage preflight) when the source is empty, the newest backup holds data and empty backups
    are not allowed; when another source made that backup (`ours`, this source's identity, and `adopted`, the
    sources it took over: `jobs.identity`), the sentence names it and never offers to restore it here.
    `remote_unknown`: why the bucket could not be listed; an empty source is then refused (or, allowed, flagged)
    as if the bucket held data: unknown is the unsafe side. A source that cannot be asked now is not refused:
    the snapshot will say what is wrong."""
    found = newest(local, remote, now)
    protects = found is not None and holds_data(found.backup)
    if not protects and remote_unknown is None:
        return [], None
    try:
        if source.has_rows():
            return [], None
    except SourceError as error:
        log.warning("backup.rows_unknown", reason=str(error), detail="the source could not be asked whether it holds "
                    "rows; the backup goes on and its snapshot says what is wrong")
        return [], None
    if found is None or not protects:  # only the bucket, which could not be listed, may hold the data
        unknown = (f"{what} holds no rows or keys and the bucket could not be listed ({str(remote_unknown).rstrip('.')}), "
                   "so whether the set's backups there hold data is unknown")
        if not allow_empty:
            raise SourceError(f"{unknown}; no backup was written, lest an empty copy become the one restored: fix "
                              "the bucket's settings (S3_BUCKET, S3_ENDPOINT_URL, credentials) or wait until it answers, "
                              "then back up again; if the database is meant to be empty, set BACKUP_ALLOW_EMPTY=true",
                              stage="preflight")
        warning = (f"{unknown}; BACKUP_ALLOW_EMPTY=true let this backup through, flagged empty_allowed: "
                   "`restore --latest` passes over it")
        log.warning("backup.empty_allowed", detail=warning)
        return [EMPTY_ALLOWED], warning
    theirs = identity.recorded(found.backup.manifest.get("source")) if ours is not None else None
    if theirs is not None and ours is not None:  # a lost volume's new install id, a recreated server: no other source
        if not identity.same_recovered(theirs, ours) and not identity.taken_over(theirs, found.backup.created_at, adopted):
            raise SourceError(refusal(what, found, theirs), stage="preflight")
    if not allow_empty:
        raise SourceError(refusal(what, found), stage="preflight")
    warning = (f"{what} holds no {_unit(found)} while the set's newest backup {found.backup.id} {_holds(found)}; "
               "BACKUP_ALLOW_EMPTY=true let this backup through, flagged empty_allowed: `restore --latest` passes over it "
               "and the backups from before stay until you delete them")
    log.warning("backup.empty_allowed", newest=found.backup.id, detail=warning)
    return [EMPTY_ALLOWED], warning


def previous(backups: Sequence[Backup], now: datetime) -> Backup | None:
    """Return the set's previous backup for the shrink check: the newest verified one by date, whatever its flags,
    not dated in the future."""
    found = selection.candidates(backups, now)
    return found[0] if found else None


def shrank(raw_size: int, before: Backup | None, total: int | None = None) -> str | None:
    """Return how a backup of `raw_size` raw bytes holding `total` rows or keys (`held`; None: not counted)
    shrank against `before`, as a clause for people, or None: its raw size under a tenth of `before`'s, or its
    rows (keys) under a tenth of those `before` records (a database whose pages stay allocated after a mass
    delete keeps its size)."""
    if before is None:
        return None
    prior = before.manifest.get("raw_size")
    if isinstance(prior, int) and not isinstance(prior, bool) and raw_size * SHRINK_FACTOR < prior:
        return f"is {raw_size} bytes raw, under a tenth of the set's previous backup {before.id} ({prior} bytes)"
    unit = "keys" if before.kind == "rdb" else "rows"
    counted = held(before.manifest)
    if total is not None and counted is not None and total * SHRINK_FACTOR < counted:
        return f"holds {total} {unit}, under a tenth of the set's previous backup {before.id} ({counted} {unit})"
    return None
