"""Whose backup is this: one answer for the manifest, the restore over a live database and the backup-time check
that two sources never share a backup set.

A backup records who made it in its manifest's `source`: for SQLite the database's absolute path, for PostgreSQL
and Redis the host, port (and database), and on Railway the environment (and, for SQLite, whose volume belongs to
one service, the service) from RAILWAY_ENVIRONMENT_ID / RAILWAY_SERVICE_ID. Two sources are the same when those
fields are equal. A manifest written before identities were recorded has none: it belongs to nobody in
particular and never blocks anything.

A source takes a set over when it restores one of the set's backups (at start, or by an explicit id with --yes):
the identity of that backup is then "adopted" (a small file in the backup directory), so the source's next backups
are not refused because the newest backup in the bucket still carries the former owner's identity.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
import json
import os
from pathlib import Path
from typing import Any, Protocol

import structlog

from jobs.artifacts import atomic_file
from jobs.backups import Backup, BackupSet
from jobs.errors import SourceError
from jobs.selection import is_future

log = structlog.get_logger("jobs.identity")

# The fields that tell sources apart, per artifact kind; Railway's ids join them when the worker runs there.
CORE = {"sqlite": ("path",), "pgdump": ("host", "port", "database"), "rdb": ("host", "port")}
RAILWAY = {"railway_service_id": "RAILWAY_SERVICE_ID", "railway_environment_id": "RAILWAY_ENVIRONMENT_ID"}
PER_SERVICE = ("sqlite",)  # a file database lives on one service's volume: the service is part of who it is
ADOPTED_NAME = ".adopted-sets.json"
MAX_ADOPTED_BYTES = 256 << 10


class Identified(Protocol):
    kind: str

    def identity(self) -> dict[str, str]: ...


def of(source: Identified, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Given a source, return its identity as the manifest records it (kind, its core fields, Railway's ids)."""
    env = os.environ if env is None else env
    found = {"kind": source.kind, **{key: str(value) for key, value in source.identity().items()}}
    for field, variable in RAILWAY.items():
        if field == "railway_service_id" and source.kind not in PER_SERVICE:
            continue
        if env.get(variable, "").strip():
            found[field] = env[variable].strip()
    return found


def recorded(manifest_source: Any) -> dict[str, str] | None:
    """Given a manifest's `source` (untrusted), return the identity it records, or None when it records none."""
    if not isinstance(manifest_source, Mapping):
        return None
    kind = manifest_source.get("kind")
    if kind not in CORE or not all(isinstance(manifest_source.get(key), (str, int)) for key in CORE[kind]):
        return None
    found = {"kind": str(kind)}
    for key in (*CORE[kind], *RAILWAY):
        value = manifest_source.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            found[key] = str(value)
    return found


def same(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Return whether two identities name the same source (host names compared without case)."""
    keys = ("kind", *CORE.get(a.get("kind", ""), ()), *RAILWAY)
    folded = {"host"}
    return all((a.get(key) or "").lower() == (b.get(key) or "").lower() if key in folded else a.get(key) == b.get(key)
               for key in keys)


def describe(identity: Mapping[str, str]) -> str:
    """Return an identity for people: `sqlite /app/data/app.db on Railway service 6f1c…, environment 0a9b…`."""
    kind = identity.get("kind", "?")
    if kind == "sqlite":
        text = f"the SQLite database {identity.get('path')}"
    elif kind == "pgdump":
        text = f"the PostgreSQL database {identity.get('database')} at {identity.get('host')}:{identity.get('port')}"
    else:
        text = f"the Redis server at {identity.get('host')}:{identity.get('port')}"
    railway = [f"{label} {identity[key][:8]}…" for key, label in (("railway_service_id", "service"),
                                                                   ("railway_environment_id", "environment"))
               if identity.get(key)]
    return text + (f" on Railway ({', '.join(railway)})" if railway else "")


def owner(backups: Sequence[Backup], now: datetime | None = None) -> tuple[Backup, dict[str, str]] | None:
    """Return the newest backup (not dated in the future) that records who made it, with that identity."""
    now = now or datetime.now(timezone.utc)
    for backup in sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True):
        found = recorded(backup.manifest.get("source"))
        if found is not None and not is_future(backup, now):
            return backup, found
    return None


def collision(backups: Sequence[Backup], ours: Mapping[str, str], adopted: Sequence[Mapping[str, str]],
              backup_set: BackupSet, where: str) -> str | None:
    """Return why this source must not write into `backup_set` at `where` (its newest backup was made by another
    source that this one did not take over), as one sentence naming both and the fix; None when it may."""
    found = owner(backups)
    if found is None:
        return None
    backup, theirs = found
    if same(theirs, ours) or any(same(theirs, taken) for taken in adopted):
        return None
    return (f"the backup set {backup_set} in {where} belongs to another source: its newest backup {backup.id} was made "
            f"by {describe(theirs)}, and this worker backs up {describe(ours)}; two sources must never share a set, so "
            "nothing was written: give this source a set of its own with BACKUP_NAME (or the bucket a prefix of its "
            f"own with S3_PREFIX), or, if this is the same database moved or recreated, take the set over by restoring "
            f"one of its backups by id with --yes (`python -m worker restore {backup.id} --yes`)")


def require_own(backups: Sequence[Backup], ours: Mapping[str, str], adopted: Sequence[Mapping[str, str]],
                backup_set: BackupSet, where: str) -> None:
    """Raise SourceError (stage preflight) if `collision` finds the set taken by another source."""
    problem = collision(backups, ours, adopted, backup_set, where)
    if problem:
        raise SourceError(problem, stage="preflight")


def adopted(backup_dir: Path, backup_set: BackupSet) -> list[dict[str, str]]:
    """Return the identities this worker took over for `backup_set` (from the backup directory; [] if none)."""
    return [identity for identity in _load(backup_dir).get(_key(backup_set), []) if isinstance(identity, dict)]


def adopt(backup_dir: Path, backup_set: BackupSet, identity: Mapping[str, str]) -> None:
    """Record that this worker's source took `backup_set` over from the source `identity`."""
    data = _load(backup_dir)
    known = [entry for entry in data.get(_key(backup_set), []) if isinstance(entry, dict)]
    if any(same(entry, identity) for entry in known):
        return
    data[_key(backup_set)] = [*known, dict(identity)][-10:]
    with atomic_file(backup_dir / ADOPTED_NAME) as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True).encode())
    log.info("backup_set.taken_over", backup_set=str(backup_set), previous_owner=describe(identity))


def _key(backup_set: BackupSet) -> str:
    return f"{backup_set.name}.{backup_set.kind}"


def _load(backup_dir: Path) -> dict[str, list[Any]]:
    try:
        with (backup_dir / ADOPTED_NAME).open("rb") as handle:
            data = json.loads(handle.read(MAX_ADOPTED_BYTES))
    except (OSError, ValueError):
        return {}
    return {key: value for key, value in data.items() if isinstance(value, list)} if isinstance(data, dict) else {}
