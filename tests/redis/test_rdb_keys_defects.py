"""Defects an adversarial review found in the RDB key walk (jobs.engines.rdb_keys), each test guarding one (all
fixed): Valkey 9's type 22, empty collections, a checksum-less file cut short. Records are built byte by byte as
the servers' own rdb.c writes and reads them; a real redis-server is the oracle where it can load them."""

from pathlib import Path
import struct
import threading

import pytest

from jobs.engines import rdb
from jobs.engines.rdb_keys import KeyCounter
from jobs.errors import IntegrityError
from tests.redis.servers import redis_server
from tests.redis.test_rdb_keys import count, counted, length, rdb_file, string


def valkey_hash_with_field_ttls(key: bytes, fields: list[tuple[bytes, bytes, int]]) -> bytes:
    """Valkey 9's RDB_TYPE_HASH_2 (22), as its rdbSaveObject writes it for a hash table hash with volatile fields:
    the field count, then per field its name, its value and its expiry (8 bytes, little-endian ms; -1 for none).
    Redis gave the same number 22 to another layout (HASH_METADATA_PRE_GA: per field a TTL length, then name, value)."""
    record = b"\x16" + string(key) + length(len(fields))
    for name, value, expiry in fields:
        record += string(name) + string(value) + struct.pack("<q", expiry)
    return record


def test_a_valkey_9_hash_with_field_ttls_is_counted() -> None:
    """Defect: the walk reads value type 22 in Redis's HASH_METADATA_PRE_GA layout whatever the file's magic, but a
    VALKEY080 file (Valkey 9.0, the RDB version the walk itself parses) uses 22 for RDB_TYPE_HASH_2, whose fields
    are (name, value, 8-byte expiry). Every Valkey 9 backup holding one hash with an HEXPIRE'd field (sessions,
    rate limits...) desyncs the walk: it records `uncounted` with a bogus reason ("value type 118 is unknown", "the
    stream ended before the EOF opcode", as if the file were truncated), or could count wrong numbers, and the drill
    and the empty-source guard lose the counts of that server for good."""
    body = (b"\xfa" + string(b"valkey-ver") + string(b"9.0.0") + b"\xfe\x00" + b"\xfb" + length(4) + length(1)
            + b"\x00" + string(b"plain") + string(b"1")
            + valkey_hash_with_field_ttls(b"session:42", [(b"token", b"abc", 1_900_000_000_000), (b"user", b"42", -1)])
            + b"\xfc" + struct.pack("<q", 1_900_000_000_000) + b"\x00" + string(b"expiring") + string(b"2")
            + b"".join(b"\x00" + string(b"key:%d" % i) + string(b"value-%d" % i) for i in range(200)))
    data = rdb_file(body, b"VALKEY080")
    for size in (1, 7, 4096):
        counter = count(data, size)
        # the hash with field TTLs is counted apart (the drill lets it be gone), the key with a TTL in expires
        assert counter.finish() == counted({"db0": 203}, {"db0": 1}, {"db0": 1}), (size, counter.problem)


def test_collections_redis_drops_as_empty_on_load_are_not_counted(tmp_path: Path) -> None:
    """Defect: Redis skips an empty collection as it loads an RDB (rdbLoadObject's `emptykey`: a list, set, sorted
    set or hash whose element count is 0, "rdbLoadObject skipping empty key"; old servers and RESTOREd payloads wrote
    them, redis/redis#8453, #9297), but the walk counts it as a key without a TTL. The drill requires keys without a
    TTL to match exactly, so such a backup fails its drill ("db0 has 1 keys without a TTL, the backup recorded 5")
    though it restores everything there is. The real redis-server 7.0 is the oracle here."""
    body = (b"\xfe\x00" + b"\x00" + string(b"kept") + string(b"v")
            + b"\x01" + string(b"empty-list") + length(0)
            + b"\x02" + string(b"empty-set") + length(0)
            + b"\x04" + string(b"empty-hash") + length(0)
            + b"\x05" + string(b"empty-zset") + length(0))
    (tmp_path / "restore").mkdir()
    (tmp_path / "restore" / "dump.rdb").write_bytes(rdb_file(body, b"REDIS0010"))
    with redis_server(tmp_path / "restore") as server:
        loaded = server.client(0).dbsize()
    assert loaded == 1  # what a restore (and the drill's private server) holds
    counter = KeyCounter()
    counter.feed(rdb_file(body, b"REDIS0010"))
    assert counter.finish() == counted({"db0": loaded}, {"db0": 0})


def test_without_a_checksum_a_file_the_walk_shows_is_cut_short_is_not_kept(tmp_path: Path) -> None:
    """Defect: with `rdbchecksum no` (8 zero bytes where the CRC64 goes) or an RDB before version 5, RdbCheck's only
    proof is "the header, and an EOF byte before the last 8 bytes": nothing covers the body. The walk now reads the
    whole structure and knows when the file is cut short inside a record (the EOF byte and zeros were a value's
    bytes), yet RdbCheck keeps such a file as verified and only records `uncounted`, and the log says "the backup is
    kept" while docs/drills.md says such a file "is still proven by its CRC64", which it is not. redis-server cannot
    load the file (a short read), so a backup that does not restore is published as verified. When there is no
    checksum, a walk that ends before the EOF opcode (as opposed to one that meets a type it does not know) must fail
    the check."""
    cut = (b"REDIS0010" + b"\xfe\x00" + b"\x00" + string(b"kept") + string(b"v")
           + b"\x00" + string(b"k") + length(100) + b"x" * 20 + b"\xff" + bytes(8))  # a value cut after 20 of its 100 bytes
    (tmp_path / "restore").mkdir()
    (tmp_path / "restore" / "dump.rdb").write_bytes(cut)
    with pytest.raises(RuntimeError, match="exited"):  # the oracle: redis-server refuses the file
        with redis_server(tmp_path / "restore"):
            pass
    details: dict = {}
    check = rdb.RdbCheck(threading.Event(), details, count_keys=True)
    check.feed(cut)
    with pytest.raises(IntegrityError):
        check.finish()
