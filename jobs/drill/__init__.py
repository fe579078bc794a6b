"""Restore drills: a backup fetched as a disaster would fetch it, restored into a scratch target, and compared with
what the backup recorded when it was made.

The proof is restore's own (`jobs.restore.proven_raw`: size and SHA-256 against the manifest, decryption when
encrypted, one decompression with every frame checksum checked, the engine's check), so a drill walks the route a
real restore walks. The proven raw snapshot then goes into a scratch target, one module per engine:

- `sqlite`: the proven file itself, on the backup volume (its `PRAGMA integrity_check` already ran), counted;
- `postgres`: a scratch database on the source's server (`<db>_drill_<stamp>`, or DRILL_TARGET_URL), filled by
  pg_restore as `restore --target-url` fills one, counted, and dropped (emptied) afterwards, whatever happened;
- `redis`: a private redis-server on a free loopback port loading the RDB, its keys per database counted.

What was counted is compared with the manifest (`compare`): exact rows per table; for Redis, keys without a TTL
exactly and keys with one as "at most" (the server drops those that expired since). A backup whose manifest
records no counts (made before counts were recorded) is drilled on what it can show: the proof and the restore.
The source database is never read or written.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
import threading
from typing import Any

from jobs import encryption
from jobs.backups import Backup
from jobs.drill import compare, postgres, redis, sqlite
from jobs.drill.pg_target import OperatorTarget
from jobs.engines import Source
from jobs.errors import IntegrityError
from jobs.restore import proven_raw


@dataclass(frozen=True)
class Drilled:
    """What one drill did: the checks that passed (the proof's, the restore's, the comparison's), what the
    restored copy holds (`measured`, as the manifest records counts) and what it was compared with, for people."""

    checks: list[str]
    measured: dict[str, Any]
    compared: str

    def fields(self) -> dict[str, Any]:
        """Return the log event's and the catalog row's form."""
        return {"checks": self.checks, "measured": self.measured, "compared": self.compared}


# How each kind of backup is restored into its scratch target and counted: (raw, backup, source, operator's
# target (DRILL_TARGET_URL), cancel) -> (checks, measured). Each engine module owns its scratch target and removes
# it, whatever happens.
Restorer = Callable[[Path, Backup, Source, "OperatorTarget | None", threading.Event], tuple[list[str], dict[str, Any]]]
RESTORERS: dict[str, Restorer] = {
    sqlite.KIND: sqlite.restore_and_count,
    postgres.KIND: postgres.restore_and_count,
    redis.KIND: redis.restore_and_count,
}


def drill(artifact: Path, backup: Backup, source: Source, workdir: Path, cancel: threading.Event,
          identities: Sequence[encryption.Identity] = (), target: OperatorTarget | None = None) -> Drilled:
    """Prove the local artifact file of `backup` (decrypted with `identities`), restore it into its engine's
    scratch target (for PostgreSQL on `source`'s server, or into the operator's `target`), count what it holds and compare
    that with the manifest. Scratch files live in a private directory inside `workdir` (the backup volume).
    Return what was done; raise IntegrityError (damage), NoIdentity, SourceError (the restore or its scratch
    target failed), JobError at stage `compare` (the restored copy differs from what the backup recorded),
    SpaceError or Cancelled. Nothing of the drill is left behind."""
    restorer = RESTORERS.get(backup.kind)
    if restorer is None:
        raise IntegrityError(f"{backup.artifact} is a backup of kind {backup.kind!r}, which this version cannot drill")
    with proven_raw(artifact, backup, workdir, cancel, identities=identities) as (raw, checks):
        restored, measured = restorer(raw, backup, source, target, cancel)
    compared = compare.against_manifest(backup, measured)
    return Drilled([*checks, *restored, "counts compared" if compare.recorded(backup) else "restorable"],
                   measured, compared)
