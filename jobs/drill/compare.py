"""What a drill's restored copy holds, compared with what its backup recorded when it was made.

Rows (SQLite, PostgreSQL): the manifest's `counts` (`{"unit": "rows", "total": N, "tables": {name: n}}`, measured
on the snapshot itself) must match the restored copy's exactly, table by table. Keys (Redis): the manifest's
`rdb.keys` (and `rdb.expires`, the keys with a TTL) per database; keys without a TTL must match exactly, keys with
one may be fewer (redis-server drops those that expired since the backup), never more. The manifest is untrusted
input: only well-formed numbers count, anything else is "no counts recorded".
"""

from typing import Any

from jobs.backups import Backup
from jobs.engines import COUNTS
from jobs.errors import JobError

SHOWN = 3  # differences named in the sentence; the rest are counted


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def recorded_rows(backup: Backup) -> dict[str, int] | None:
    """Return the rows per table the manifest records, or None when it records none (or garbage)."""
    counts = backup.manifest.get(COUNTS)
    tables = counts.get("tables") if isinstance(counts, dict) else None
    if not isinstance(tables, dict) or not all(_number(value) is not None for value in tables.values()):
        return None
    return {str(name): value for name, value in tables.items()}


def recorded_keys(backup: Backup) -> tuple[dict[str, int], dict[str, int] | None] | None:
    """Return the keys per database the manifest records and, when it records them too, the keys with a TTL per
    database; None when it records no key counts."""
    rdb = backup.manifest.get("rdb")
    keys = rdb.get("keys") if isinstance(rdb, dict) else None
    if not isinstance(keys, dict) or not all(_number(value) is not None for value in keys.values()):
        return None
    expires = rdb.get("expires")
    if not isinstance(expires, dict) or not all(_number(value) is not None for value in expires.values()):
        expires = None
    return dict(keys), (dict(expires) if expires is not None else None)


def recorded(backup: Backup) -> bool:
    """Return whether the manifest records counts a drill can compare with."""
    return (recorded_rows(backup) if backup.kind != "rdb" else recorded_keys(backup)) is not None


def _fail(backup: Backup, differences: list[str]) -> JobError:
    more = f" and {len(differences) - SHOWN} more" if len(differences) > SHOWN else ""
    return JobError(f"the restored copy of {backup.id} does not hold what the backup recorded when it was made: "
                    f"{'; '.join(differences[:SHOWN])}{more}; the backup is not what it claims to be, so take a new "
                    "backup now and keep this one for inspection", stage="compare")


def rows_differences(recorded_tables: dict[str, int], measured_tables: dict[str, int]) -> list[str]:
    """Return, one clause each, how the restored tables differ from the recorded ones ([] when they match)."""
    found = []
    for name in sorted(recorded_tables.keys() | measured_tables.keys()):
        want, got = recorded_tables.get(name), measured_tables.get(name)
        if got is None:
            found.append(f"table {name} is missing (the backup recorded {want} rows)")
        elif want is None:
            found.append(f"table {name} ({got} rows) was not recorded in the backup")
        elif want != got:
            found.append(f"table {name} has {got} rows, the backup recorded {want}")
    return found


def keys_differences(keys: dict[str, int], expires: dict[str, int] | None,
                     measured: dict[str, dict[str, int]]) -> list[str]:
    """Return, one clause each, how the restored databases differ from the recorded key counts: keys without a
    TTL exactly, keys with one at most (without recorded TTL counts, every key at most)."""
    found = []
    for name in sorted(keys.keys() | measured.keys()):
        want, got = keys.get(name, 0), measured.get(name, {"keys": 0, "expires": 0})
        if expires is None:
            if got["keys"] > want:
                found.append(f"{name} has {got['keys']} keys, more than the {want} the backup recorded")
            continue
        want_ttl = min(expires.get(name, 0), want)
        if got["keys"] - got["expires"] != want - want_ttl:
            found.append(f"{name} has {got['keys'] - got['expires']} keys without a TTL, the backup recorded "
                         f"{want - want_ttl}")
        if got["expires"] > want_ttl:
            found.append(f"{name} has {got['expires']} keys with a TTL, more than the {want_ttl} the backup recorded")
    return found


def against_manifest(backup: Backup, measured: dict[str, Any]) -> str:
    """Compare what the restored copy holds (`measured`) with the manifest; return what was compared, for people.
    Raise JobError at stage `compare`, one sentence naming the differences, when they do not match."""
    if backup.kind == "rdb":
        known = recorded_keys(backup)
        if known is None:
            return "the manifest records no key counts (a backup made before they were recorded): proven and loaded only"
        differences = keys_differences(*known, measured.get("databases", {}))
        if differences:
            raise _fail(backup, differences)
        total = sum(db["keys"] for db in measured.get("databases", {}).values())
        return f"{total} keys in {len(known[0])} database(s), as recorded"
    tables = recorded_rows(backup)
    if tables is None:
        return "the manifest records no row counts (a backup made before they were recorded): proven and restored only"
    differences = rows_differences(tables, measured.get("tables", {}))
    if differences:
        raise _fail(backup, differences)
    return f"{sum(tables.values())} rows in {len(tables)} table(s), exactly as recorded"
