"""A defect an adversarial review found in how a drill reads the key counts the RDB walk recorded (fixed): a hash
whose field TTLs have all passed must not fail the drill."""

from datetime import datetime, timezone
import struct

from jobs.backups import Backup
from jobs.drill import compare
from jobs.engines.rdb_keys import KeyCounter
from tests.redis.test_rdb_keys import length, rdb_file, string

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=timezone.utc)


def backup(manifest: dict) -> Backup:
    artifact = "cache-20261206T010000Z.rdb.zst"
    return Backup(id=artifact.removesuffix(".zst"), artifact=artifact, created_at=NOW, size=10, sha256="0" * 64,
                  verified=True, manifest=manifest)


def test_a_hash_whose_field_ttls_have_all_passed_does_not_fail_the_drill() -> None:
    """Defect: a hash with field TTLs (HEXPIRE: Redis 7.4+ types 24/25, 22/23 before GA; Valkey 9's type 22) has
    no key TTL, so the walk counts it among the keys *without* a TTL, which the drill requires to match exactly.
    But such a key disappears from the restored copy once all its fields' TTLs have passed: Valkey skips it while
    loading (RDB_LOAD_ERR_ALL_ITEMS_EXPIRED, valkey-io/valkey#3091) and Redis's active field expiry deletes it
    right after. A session hash whose only field was set to expire in an hour, drilled the next day, fails a sound
    backup with "the backup is not what it claims to be". Such keys may vanish like keys with a TTL, so the counts
    must let them (e.g. count them among `expires`, or apart)."""
    min_expire = 1_765_000_000_000  # the hash's earliest field expiry, ms
    hfe_hash = (b"\x18" + string(b"session:42") + struct.pack("<Q", min_expire) + length(1)
                + length(1) + string(b"token") + string(b"abc"))  # TTL relative to min_expire (+1): expires at min_expire
    data = rdb_file(b"\xfe\x00" + b"\x00" + string(b"config") + string(b"v") + hfe_hash)
    counter = KeyCounter()
    counter.feed(data)
    counts = counter.finish()
    assert counts is not None, counter.problem
    manifest = {"rdb": {"transfer": "diskless", **counts}}
    restored = {"databases": {"db0": {"keys": 1, "expires": 0}}}  # the hash's only field expired: the hash is gone
    assert compare.keys_differences(counts["keys"], counts["expires"], counts["hashes_with_field_ttls"],
                                    restored["databases"]) == []
    compare.against_manifest(backup(manifest), restored)  # must not raise JobError at stage compare
