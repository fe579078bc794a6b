"""What a drill's restored copy holds, compared with what its backup recorded when it was made.

Rows (SQLite, PostgreSQL): the manifest's `counts` (`{"unit": "rows", "total": N, "tables": {name: n}}`, measured
on the snapshot itself) must match the restored copy's exactly, table by table. Keys (Redis): the manifest's
`rdb.keys` (and `rdb.expires`, the keys with a TTL) per database; keys without a TTL must match exactly, keys with
one may be fewer (redis-server drops those that expired since the backup), never more. The manifest is untrusted
input: a manifest without counts (made before they were recorded) is drilled on its proof and restore; counts that
are there but malformed fail the drill ("cannot be read"), never pass as "no counts recorded".
"""

from typing import Any

from jobs.backups import Backup
from jobs.engines import COUNTS, rdb_keys
from jobs.errors import JobError
from jobs.manifest import whole_numbers

SHOWN = 3  # differences named in the sentence; the rest are counted


def _unreadable(backup: Backup, what: str) -> JobError:
    return JobError(f"the manifest of {backup.id} records {what} that cannot be read (not a map of names to whole "
                    "numbers), so the restored copy cannot be compared with it; the manifest was altered or damaged: "
                    "take a new backup now and keep this one for inspection", stage="compare")


def recorded_rows(backup: Backup) -> dict[str, int] | None:
    """Return the rows per table the manifest records, or None when it records none (a backup made before counts
    were recorded). Raise JobError at stage `compare` when it records counts that cannot be read."""
    if COUNTS not in backup.manifest:
        return None
    counts = backup.manifest[COUNTS]
    tables = whole_numbers(counts.get("tables")) if isinstance(counts, dict) else None
    if tables is None:
        raise _unreadable(backup, "row counts")
    return tables


def recorded_keys(backup: Backup) -> tuple[dict[str, int], dict[str, int], dict[str, int]] | None:
    """Return the keys, the keys with a TTL and the hashes with field TTLs per database the manifest records,
    measured on its file; None when it records none so measured (jobs.engines.rdb_keys.recorded). Raise JobError at
    stage `compare` when it records counts that cannot be read."""
    try:
        return rdb_keys.recorded(backup.manifest)
    except ValueError:
        raise _unreadable(backup, "key counts") from None


def _why_uncounted(backup: Backup) -> str:
    """Return why a Redis manifest records no key counts, as the backup wrote it (untrusted: shortened, printable)."""
    rdb = backup.manifest.get("rdb")
    why = rdb.get("uncounted") if isinstance(rdb, dict) else None
    if not isinstance(why, str) or not why.strip():
        return "a backup made before they were measured on the file"
    text = "".join(char if char.isprintable() else "?" for char in why.strip())
    return text if len(text) <= 200 else text[:199] + "…"


def recorded(backup: Backup) -> bool:
    """Return whether the manifest records counts a drill can compare with (readable or not)."""
    if backup.kind != "rdb":
        return COUNTS in backup.manifest
    try:
        return rdb_keys.recorded(backup.manifest) is not None
    except ValueError:
        return True


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


def keys_differences(keys: dict[str, int], expires: dict[str, int], field_ttls: dict[str, int],
                     measured: dict[str, dict[str, int]]) -> list[str]:
    """Return, one clause each, how the restored databases differ from the recorded key counts: keys with a TTL at
    most as many (those that expired since are dropped on load); keys without one exactly, but for the hashes with
    field TTLs, which may be gone too (the restored server's INFO counts them among the keys without a TTL)."""
    found = []
    for name in sorted(keys.keys() | measured.keys()):
        want, got = keys.get(name, 0), measured.get(name, {"keys": 0, "expires": 0})
        want_ttl = min(expires.get(name, 0), want)
        may_go = min(field_ttls.get(name, 0), want - want_ttl)
        stable, plain = want - want_ttl - may_go, got["keys"] - got["expires"]
        if not stable <= plain <= stable + may_go:
            hashes = f" (and {may_go} hashes with field TTLs, which may have expired)" if may_go else ""
            found.append(f"{name} has {plain} keys without a TTL, the backup recorded {stable}{hashes}")
        if got["expires"] > want_ttl:
            found.append(f"{name} has {got['expires']} keys with a TTL, more than the {want_ttl} the backup recorded")
    return found


def against_manifest(backup: Backup, measured: dict[str, Any]) -> str:
    """Compare what the restored copy holds (`measured`) with the manifest; return what was compared, for people.
    Raise JobError at stage `compare`, one sentence naming the differences, when they do not match."""
    if backup.kind == "rdb":
        known = recorded_keys(backup)
        if known is None:
            return f"the manifest records no key counts ({_why_uncounted(backup)}): proven and loaded only"
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
