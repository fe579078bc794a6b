"""Whose backup is this: one answer for the manifest, the restore over a live database and the backup-time check
that two sources never share a backup set.

A backup records who made it in its manifest's `source`:
- SQLite: the database's absolute `path`; PostgreSQL: `host`, `port`, `database` and, when the server lets us read
  it (pg_control_system()), `cluster`, the server's own system identifier, which does not change when the same
  server is reached under another address; Redis: `host`, `port`.
- On Railway, the environment (`railway_environment_id`) and, for SQLite, whose volume belongs to one service, the
  service (`railway_service_id`), from RAILWAY_ENVIRONMENT_ID / RAILWAY_SERVICE_ID. Off Railway, SQLite and Redis
  sources also carry `install`: a random id kept in the backup directory (`.install-id`), so that two machines
  with the same path or host name never pass for one source.
Two identities are the same source when those fields are equal; `cluster` replaces host and port when both
sides have it, and `install` is compared only when both sides have it (manifests written before it count). A
manifest that records no identity at all belongs to nobody in particular and never blocks anything.

A source takes a set over when it restores one of the set's backups (at start, or by an explicit id with --yes)
or when asked to (`backup --take-over`, for the same database moved, recreated or reached under a new address):
the former owner's identity is then "adopted" (`.adopted-sets.json` in the backup directory), with the time. An
adoption lapses as soon as the former owner writes into the set again: two live sources never share a set.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
import json
import os
from pathlib import Path
import re
import secrets
from typing import Any, Protocol

import structlog

from jobs.artifacts import BackupSet
from jobs.backups import Backup
from jobs.errors import SourceError
from jobs.files import atomic_file
from jobs.selection import is_future

log = structlog.get_logger("jobs.identity")

# The fields that tell sources apart, per artifact kind; Railway's ids join them when the worker runs there.
CORE = {"sqlite": ("path",), "pgdump": ("host", "port", "database"), "rdb": ("host", "port")}
RAILWAY = {"railway_service_id": "RAILWAY_SERVICE_ID", "railway_environment_id": "RAILWAY_ENVIRONMENT_ID"}
PER_SERVICE = ("sqlite",)  # a file database lives on one service's volume: the service is part of who it is
PER_INSTALL = ("sqlite", "rdb")  # off Railway, names alone do not tell two machines apart
OPTIONAL = ("cluster", "install")  # compared only when both identities carry them
# What losing a database or its volume renews: a recreated PostgreSQL server gets a new system identifier, a new
# volume off Railway a new `.install-id`. A source whose data is lost cannot be told from its former self by them.
RENEWED = ("cluster", "install")
ADOPTED_NAME = ".adopted-sets.json"
INSTALL_NAME = ".install-id"
MAX_ADOPTED_BYTES = 256 << 10


class Identified(Protocol):
    kind: str

    def identity(self) -> dict[str, str]: ...


def of(source: Identified, backup_dir: Path | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Given a source and the backup directory (where the install id is kept; None: not looked at), return its
    identity as the manifest records it (kind, its own fields, Railway's ids or the install id)."""
    env = os.environ if env is None else env
    found = {"kind": source.kind, **{key: str(value) for key, value in source.identity().items()}}
    for field, variable in RAILWAY.items():
        if field == "railway_service_id" and source.kind not in PER_SERVICE:
            continue
        if env.get(variable, "").strip():
            found[field] = env[variable].strip()
    if backup_dir is not None and source.kind in PER_INSTALL and not any(field in found for field in RAILWAY):
        install = install_id(backup_dir)
        if install:
            found["install"] = install
    return found


def install_id(backup_dir: Path) -> str | None:
    """Return this installation's random id, kept in `backup_dir` (created at first use); None when the directory
    can be neither read nor written (a read-only volume with no id yet)."""
    path = backup_dir / INSTALL_NAME
    try:
        with path.open("rb") as handle:
            text = handle.read(64).decode("ascii", "replace").strip()
        if re.fullmatch(r"[0-9a-f]{32}", text):
            return text
    except OSError:
        pass
    text = secrets.token_hex(16)
    try:
        with atomic_file(path) as handle:
            handle.write(text.encode() + b"\n")
    except OSError:
        return None
    return text


def recorded(manifest_source: Any) -> dict[str, str] | None:
    """Given a manifest's `source` (untrusted), return the identity it records, or None when it records none."""
    if not isinstance(manifest_source, Mapping):
        return None
    kind = manifest_source.get("kind")
    if kind not in CORE or not all(isinstance(manifest_source.get(key), (str, int)) for key in CORE[kind]):
        return None
    found = {"kind": str(kind)}
    for key in (*CORE[kind], *RAILWAY, *OPTIONAL):
        value = manifest_source.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            found[key] = str(value)
    return found


def same(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Return whether two identities name the same source: the same kind and Railway ids; the same server
    (`cluster`) and database when both know the server, else the same core fields (host names without case); and
    the same install when both carry one."""
    if a.get("kind") != b.get("kind") or any(a.get(key) != b.get(key) for key in RAILWAY):
        return False
    if a.get("install") and b.get("install") and a["install"] != b["install"]:
        return False
    if a.get("cluster") and b.get("cluster"):
        return a["cluster"] == b["cluster"] and a.get("database") == b.get("database")
    return all((a.get(key) or "").lower() == (b.get(key) or "").lower() if key == "host" else a.get(key) == b.get(key)
               for key in CORE.get(a.get("kind", ""), ()))


def same_recovered(theirs: Mapping[str, str], ours: Mapping[str, str]) -> bool:
    """Return whether a backup made by `theirs` may be this source's own (`ours`) from before its data was lost:
    the same source by `same`, or by `same` once what a loss renews (RENEWED: the server's cluster, the installation) is set
    aside on both sides, so the same kind, Railway ids and core fields (path; host, port and database). The one
    answer for the restore at start and for the empty-source guard; the owner check of a backup stays `same`."""
    return same(theirs, ours) or same({key: value for key, value in theirs.items() if key not in RENEWED},
                                      {key: value for key, value in ours.items() if key not in RENEWED})


def describe(identity: Mapping[str, str], where: bool = True) -> str:
    """Return an identity for people: `the SQLite database /app/data/app.db on Railway (service 6f1c…, environment
    0a9b…)`; without `where`, only the database (no Railway ids or installation)."""
    kind = identity.get("kind", "?")
    if kind == "sqlite":
        text = f"the SQLite database {identity.get('path')}"
    elif kind == "pgdump":
        text = f"the PostgreSQL database {identity.get('database')} at {identity.get('host')}:{identity.get('port')}"
    else:
        text = f"the Redis server at {identity.get('host')}:{identity.get('port')}"
    if not where:
        return text
    railway = [f"{label} {identity[key][:8]}…" for key, label in (("railway_service_id", "service"),
                                                                   ("railway_environment_id", "environment"))
               if identity.get(key)]
    if railway:
        return text + f" on Railway ({', '.join(railway)})"
    return text + (f" (installation {identity['install'][:8]}…)" if identity.get("install") else "")


def owner(backups: Sequence[Backup], now: datetime | None = None) -> tuple[Backup, dict[str, str]] | None:
    """Return the newest backup (not dated in the future) that records who made it, with that identity."""
    now = now or datetime.now(timezone.utc)
    for backup in sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True):
        found = recorded(backup.manifest.get("source"))
        if found is not None and not is_future(backup, now):
            return backup, found
    return None


def taken_over(theirs: Mapping[str, str], made_at: datetime, adopted: Sequence[Mapping[str, Any]]) -> bool:
    """Return whether a backup made by `theirs` at `made_at` belongs to a source this one took over: adopted, and
    made before the adoption (a backup its former owner writes afterwards means that owner is live again)."""
    for taken in adopted:
        since = taken.get("adopted_at")
        try:
            moment = datetime.fromisoformat(str(since))
        except ValueError:
            continue
        if moment.tzinfo is not None and made_at <= moment and same(theirs, taken):
            return True
    return False


def collision(backups: Sequence[Backup], ours: Mapping[str, str], adopted: Sequence[Mapping[str, Any]],
              backup_set: BackupSet, where: str) -> str | None:
    """Return why this source must not write into `backup_set` at `where` (its newest backup was made by another
    source that this one did not take over), as one sentence naming both and the fix; None when it may."""
    found = owner(backups)
    if found is None:
        return None
    backup, theirs = found
    if same(theirs, ours) or taken_over(theirs, backup.created_at, adopted):
        return None
    return (f"the backup set {backup_set} in {where} belongs to another source: its newest backup {backup.id} was made "
            f"by {describe(theirs)}, and this worker backs up {describe(ours)}; two sources must never share a set, so "
            "nothing was written: give this source a set of its own with BACKUP_NAME (or the bucket a prefix of its "
            "own with S3_PREFIX), or, only if this is the same database moved, recreated or reached under a new "
            "address, take the set over once with `python -m worker backup --take-over`")


def require_own(backups: Sequence[Backup], ours: Mapping[str, str], adopted: Sequence[Mapping[str, Any]],
                backup_set: BackupSet, where: str) -> None:
    """Raise SourceError (stage preflight) if `collision` finds the set taken by another source."""
    problem = collision(backups, ours, adopted, backup_set, where)
    if problem:
        raise SourceError(problem, stage="preflight")


def adopted(backup_dir: Path, backup_set: BackupSet) -> list[dict[str, Any]]:
    """Return the identities this worker took over for `backup_set`, each with `adopted_at` (from the backup
    directory; [] if none)."""
    return [identity for identity in _load(backup_dir).get(_key(backup_set), []) if isinstance(identity, dict)]


def adopt(backup_dir: Path, backup_set: BackupSet, identity: Mapping[str, str], now: datetime | None = None) -> None:
    """Record that this worker's source took `backup_set` over from the source `identity`, now."""
    data = _load(backup_dir)
    known = [entry for entry in data.get(_key(backup_set), []) if isinstance(entry, dict) and not same(entry, identity)]
    moment = (now or datetime.now(timezone.utc)).isoformat()
    data[_key(backup_set)] = [*known, {**identity, "adopted_at": moment}][-10:]
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
