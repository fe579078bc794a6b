"""The keys of an RDB file, counted per database as it streams past (jobs.engines.rdb_keys): what a backup records
and a drill compares with.

Real files first: a real redis-server holding each kind of data (every type in each of its encodings, TTLs in
several databases, LRU and LFU metadata, compressed list nodes, functions, a stream with consumer groups) sends its
snapshot over SYNC; the counts must equal the server's own INFO keyspace (taken with nothing writing) and the totals
of `redis-check-rdb`, in any chunking. Then records this server (7.0) does not write, built byte by byte as Redis's
rdb.c reads them (hash field TTLs of 7.4, stream types 15 and 21, module values, slot info, 32- and 64-bit lengths).
Last, what the walk cannot read leaves the counts unknown and says why; it never fails the check of a sound file.
"""

from collections.abc import Callable
from pathlib import Path
import re
import struct
import subprocess
import threading

import pytest
import redis

from jobs.engines import rdb
from jobs.engines import redis as engine
from jobs.engines.rdb_keys import KeyCounter
from jobs.errors import IntegrityError
from tests.redis.servers import Server, fill, redis_server, take

CHUNKINGS = (1, 3, 8, 9, 4096, 1 << 20)


def counted(keys: dict[str, int], expires: dict[str, int], field_ttls: dict[str, int] | None = None) -> dict:
    """What a walk returns for these counts (no hash with field TTLs unless given)."""
    return {"keys": keys, "expires": expires, "hashes_with_field_ttls": field_ttls or dict.fromkeys(keys, 0),
            "counted_in": "file"}


def count(data: bytes, chunk_size: int) -> KeyCounter:
    counter = KeyCounter()
    for start in range(0, len(data), chunk_size):
        counter.feed(data[start:start + chunk_size])
    return counter


def oracle(server: Server, databases: int = 16) -> dict[str, dict[str, int]]:
    """The server's own count of its keys: INFO keyspace (each database's keys and keys with a TTL)."""
    space = server.client(0).info("keyspace")
    return counted({db: fields["keys"] for db, fields in space.items()},
                   {db: fields["expires"] for db, fields in space.items()})


def check_rdb_totals(path: Path) -> tuple[int, int]:
    """The keys and expires `redis-check-rdb` reads in the file (totals over every database)."""
    out = subprocess.run(["redis-check-rdb", str(path)], capture_output=True, text=True, check=True).stdout
    found = dict((what, int(number)) for number, what in re.findall(r"\[info\] (\d+) (keys read|expires)", out))
    return found["keys read"], found["expires"]


def every_encoding(server: Server) -> None:
    fill(server)
    zero, two, fifteen = server.client(0), server.client(2), server.client(15)
    zero.set("empty", "")
    for number in (7, 300, 70000, 2**40, -5):
        zero.set(f"int:{number}", number)  # stored as 1-, 2-, 4-byte integers or a decimal string
    zero.set("long", "0123456789" * 3000)  # a 32-bit length; compressible: LZF
    zero.set("random", bytes(range(256)) * 100)
    zero.rpush("plain-node-list", "x" * 20000, "y")  # a node larger than the listpack limit: a plain node
    zero.sadd("big-set", *[f"member-{i}" for i in range(600)])  # a hash table set
    zero.zadd("big-zset", {f"m{i}": i / 3 for i in range(300)})  # a skiplist: binary doubles
    zero.zadd("odd-scores", {"inf": float("inf"), "ninf": float("-inf"), "zero": 0})
    zero.hset("tall-hash", mapping={f"field-{i}": "v" * 100 for i in range(200)})
    zero.xgroup_create("events", "workers", id="0")
    zero.xreadgroup("workers", "alice", {"events": ">"}, count=1)  # one pending entry, one consumer
    zero.xadd("events", {"kind": "deleted"})
    zero.xdel("events", zero.xrange("events")[-1][0])
    zero.xgroup_create("empty-stream", "nobody", id="$", mkstream=True)
    zero.function_load("#!lua name=lib\nredis.register_function('noop', function() return 1 end)")
    for i in range(40):
        two.set(f"ttl:{i}", i, px=3_600_000 + i)
        two.set(f"kept:{i}", i)
    fifteen.set("last-db", "here", ex=600)


def many_small_keys(server: Server) -> None:
    server.client(0).execute_command("DEBUG", "POPULATE", 20000, "pop", 16)
    server.client(3).execute_command("DEBUG", "POPULATE", 500, "three", 2000)


def compressed_list_nodes(server: Server) -> None:
    server.client(0).rpush("history", *[f"message number {i} " * 4 for i in range(5000)])
    server.client(0).set("expiring", "soon", ex=100)


DATASETS: dict[str, tuple[Callable[[Server], None], list[str]]] = {
    "empty server": (lambda server: None, []),
    "every type in every encoding": (every_encoding, []),
    "many small keys": (many_small_keys, []),
    "LFU metadata on every key": (every_encoding, ["maxmemory-policy allkeys-lfu"]),
    "LRU idle times on every key": (every_encoding, ["maxmemory-policy allkeys-lru"]),
    "compressed quicklist nodes": (compressed_list_nodes, ["list-compress-depth 1"]),
    "no LZF anywhere": (every_encoding, ["rdbcompression no"]),
    "from disk, not diskless": (every_encoding, ["repl-diskless-sync no"]),
}


@pytest.mark.parametrize("name", DATASETS)
def test_the_counts_of_a_real_snapshot_are_the_servers_own_in_any_chunking(name: str, tmp_path: Path) -> None:
    write, config = DATASETS[name]
    with redis_server(tmp_path / "source", config=config) as server:
        write(server)
        expected = oracle(server)
        taken = take(engine.open_source(server.url(), tmp_path), tmp_path / "dump.rdb")
    assert {key: taken.details["rdb"][key] for key in expected} == expected
    assert "uncounted" not in taken.details["rdb"]
    data = taken.path.read_bytes()
    for size in CHUNKINGS:
        counter = count(data, size)
        assert counter.finish() == expected, (size, counter.problem)
    assert check_rdb_totals(taken.path) == (sum(expected["keys"].values()), sum(expected["expires"].values()))


def test_a_snapshot_counts_what_the_file_holds_not_what_info_said_before_sync(tmp_path: Path) -> None:
    # Keys written after INFO could be read but before the fork are in the file: the counts follow the file.
    with redis_server(tmp_path / "source", config=["repl-diskless-sync-delay 1"]) as server:
        fill(server)
        client = server.client(0)
        stop = threading.Event()

        def write() -> None:
            number = 0
            while not stop.is_set():
                client.set(f"during:{number}", number)
                number += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        try:
            taken = take(engine.open_source(server.url(), tmp_path), tmp_path / "dump.rdb")
        finally:
            stop.set()
            writer.join(10)
    in_file, _ = check_rdb_totals(taken.path)
    assert sum(taken.details["rdb"]["keys"].values()) == in_file
    assert taken.details["rdb"]["keys"]["db0"] > 13  # the 13 keys of fill() and those written during the delay


# Records built byte by byte as rdb.c's rdbLoadObject and rdbLoadRioWithLoadingCtx read them.

def length(value: int) -> bytes:
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return bytes([0x40 | value >> 8, value & 0xFF])
    if value < 1 << 32:
        return b"\x80" + value.to_bytes(4, "big")
    return b"\x81" + value.to_bytes(8, "big")


def string(data: bytes) -> bytes:
    return length(len(data)) + data


def lzf(compressed: bytes, original_size: int) -> bytes:
    return b"\xc3" + length(len(compressed)) + length(original_size) + compressed


def rdb_file(body: bytes, header: bytes = b"REDIS0012") -> bytes:
    data = header + body + b"\xff"
    return data + rdb.crc64(data).to_bytes(8, "little")


MS = struct.pack("<q", 1_900_000_000_000)
STREAM_ID = bytes(16)
MODULE_VALUE = (length(1) + length(5) + length(2) + length(70000) + length(3) + b"\0\0\x80\x3f" + length(4) + bytes(8)
                + length(5) + string(b"module string") + length(0))


def stream(kind: int) -> bytes:
    body = length(1) + string(STREAM_ID) + string(b"listpack bytes")  # one listpack
    body += length(1) + length(5) + length(0)  # length, last ID
    if kind >= 19:
        body += length(5) + length(0) + length(0) + length(0) + length(9)  # first ID, max deleted ID, entries added
    body += length(1) + string(b"group") + length(5) + length(0)  # one group, its last delivered ID
    if kind >= 19:
        body += length(1)  # entries read
    body += length(1) + STREAM_ID + MS + length(2)  # one pending entry: raw ID, delivery time, deliveries
    body += length(1) + string(b"consumer") + MS + (MS if kind >= 21 else b"") + length(1) + STREAM_ID
    return body


RECORDS: dict[str, bytes] = {
    "string": b"\x00" + string(b"k") + string(b"v"),
    "value stored as an int8": b"\x00" + string(b"k") + b"\xc0\x07",
    "key named by an int32": b"\x00" + b"\xc2" + bytes(4) + b"\xc1\x01\x02",
    "LZF key and value": b"\x00" + lzf(b"abc", 50) + lzf(bytes(300), 70000),
    "32-bit length": b"\x00" + string(b"k") + string(b"v" * 70000),
    "64-bit length": b"\x00" + string(b"k") + b"\x81" + (5).to_bytes(8, "big") + b"fives",
    "list (linked list, RDB 1-7)": b"\x01" + string(b"k") + length(3) + string(b"a") + string(b"b") + b"\xc0\x01",
    "set": b"\x02" + string(b"k") + length(2) + string(b"a") + string(b"b"),
    "sorted set with decimal scores (RDB < 8)": (b"\x03" + string(b"k") + length(4) + string(b"a") + b"\x031.5"
                                                 + string(b"b") + b"\xfd" + string(b"c") + b"\xfe" + string(b"d") + b"\xff"),
    "hash": b"\x04" + string(b"k") + length(2) + string(b"f1") + string(b"v1") + string(b"f2") + b"\xc0\x05",
    "sorted set with binary scores": b"\x05" + string(b"k") + length(2) + string(b"a") + bytes(8) + string(b"b") + bytes(8),
    "module value with every field kind": b"\x07" + string(b"k") + length(0x1234567890) + MODULE_VALUE,
    **{f"one-blob type {kind}": bytes([kind]) + string(b"k") + string(b"blob") for kind in (9, 10, 11, 12, 13, 16, 17, 20)},
    "quicklist": b"\x0e" + string(b"k") + length(2) + string(b"zl1") + lzf(b"zz", 80),
    "quicklist 2 (plain and packed nodes)": b"\x12" + string(b"k") + length(2) + length(1) + string(b"x" * 20) + length(2) + string(b"lp"),
    **{f"stream type {kind}": bytes([kind]) + string(b"k") + stream(kind) for kind in (15, 19, 21)},
    "hash with field TTLs (7.4 RC, type 22)": (b"\x16" + string(b"k") + length(2) + length(0) + string(b"f") + string(b"v")
                                               + length(1_900_000_000_000) + string(b"g") + string(b"w")),
    "hash with field TTLs (type 24)": (b"\x18" + string(b"k") + MS + length(2) + length(0) + string(b"f") + string(b"v")
                                       + length(5) + string(b"g") + string(b"w")),
    "listpack hash with field TTLs (type 25)": b"\x19" + string(b"k") + MS + string(b"listpack"),
    "listpack hash with field TTLs (7.4 RC, type 23)": b"\x17" + string(b"k") + string(b"listpack"),
}
# Hashes with field TTLs: without a key TTL they are counted apart, as they may be gone once their fields' TTLs pass.
FIELD_TTLS = {name for name in RECORDS if "field TTLs" in name}


@pytest.mark.parametrize("name", RECORDS)
def test_each_kind_of_record_is_stepped_over_and_counted_in_any_chunking(name: str) -> None:
    record = RECORDS[name]
    body = (b"\xfa" + string(b"redis-ver") + string(b"7.4.0") + b"\xf5" + string(b"#!lua name=x\n")
            + b"\xf7" + length(0x1234567890) + length(2) + length(2) + MODULE_VALUE  # module aux data
            + b"\xfe" + length(0) + b"\xfb" + length(3) + length(1) + b"\xf4" + length(7) + length(3) + length(1)
            + record + b"\xfc" + MS + b"\xf8" + length(12) + record + b"\xfd" + b"\0\0\0\x70" + b"\xf9\x05" + record
            + b"\xfe" + length(20000) + record)
    data = rdb_file(body)
    field_ttls = {"db0": 1, "db20000": 1} if name in FIELD_TTLS else None  # the one record without a key TTL
    for size in CHUNKINGS[:-1]:
        counter = count(data, size)
        assert counter.finish() == counted({"db0": 3, "db20000": 1}, {"db0": 2, "db20000": 0}, field_ttls), (
            size, counter.problem)


def test_valkey_files_and_files_without_a_checksum_are_counted() -> None:
    assert count(rdb_file(RECORDS["set"], b"VALKEY080"), 5).finish() == counted({"db0": 1}, {"db0": 0})
    old = b"REDIS0004" + b"\xfe\x01" + RECORDS["list (linked list, RDB 1-7)"] + b"\xff"  # no checksum before version 5
    assert count(old, 2).finish() == counted({"db1": 1}, {"db1": 0})


def test_a_huge_value_streams_past_without_being_held() -> None:
    big = 64 << 20
    head = rdb_file(b"\x00" + string(b"k") + length(big))[:-9]  # the record up to its value's bytes
    counter, held = KeyCounter(), 0
    counter.feed(head)
    chunk = bytes(1 << 20)
    for _ in range(big // len(chunk)):
        counter.feed(chunk)
        held = max(held, len(counter._buf))
    tail = b"\xff"
    counter.feed(tail + rdb.crc64(b"").to_bytes(8, "little"))
    assert counter.finish() == counted({"db0": 1}, {"db0": 0})
    assert held < 64  # the value's bytes were skipped, not buffered


UNREADABLE = {
    "a value type newer than this worker": (b"\x1a" + string(b"k") + string(b"v"), "value type 26 is unknown"),
    "the 4.0 pre-release module format": (b"\x06" + string(b"k") + string(b"v"), "value type 6 is unknown"),
    "an opcode newer than this worker": (b"\xf6" + string(b"f"), "opcode 246 is unknown"),
    "a length encoding that does not exist": (b"\x00" + b"\x82" + bytes(8), "unknown length encoding 0x82"),
    "a string encoding that does not exist": (b"\x00" + b"\xc4", "unknown string encoding 4"),
    "an unknown module field": (b"\x07" + string(b"k") + length(1) + length(9), "unknown module value opcode 9"),
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_a_file_the_walk_cannot_read_passes_its_check_with_its_counts_unknown_and_why(name: str) -> None:
    record, why = UNREADABLE[name]
    data = rdb_file(b"\xfe\x00" + RECORDS["string"] + record + RECORDS["string"])
    details: dict = {}
    check = rdb.RdbCheck(threading.Event(), details, count_keys=True)
    for start in range(0, len(data), 5):
        check.feed(data[start:start + 5])
    assert check.finish() == rdb.CHECK  # the file itself is sound: its CRC64 proves it
    assert not {"keys", "expires", "hashes_with_field_ttls", "counted_in"} & set(details)
    assert details["uncounted"].startswith("the RDB's keys were not counted: ") and why in details["uncounted"]


def test_a_walk_that_does_not_end_at_the_eof_opcode_and_checksum_has_no_counts() -> None:
    data = rdb_file(b"\xfe\x00" + RECORDS["string"])
    short = count(data[:-12], 4)
    assert short.finish() is None and "before the EOF opcode" in short.problem
    longer = count(data + b"more", 4)
    assert longer.finish() is None and "followed by 12 bytes, not the 8 of a checksum" in longer.problem


def test_an_artifacts_check_counts_nothing() -> None:
    details: dict = {}
    check = rdb.RdbCheck(threading.Event(), details)
    check.feed(rdb_file(b"\xfe\x00" + RECORDS["string"]))
    check.finish()
    assert check.counter is None and set(details) == {"version", "checksum"}


def test_a_server_keyspace_moving_on_after_the_fork_does_not_change_the_counts(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source") as server:
        fill(server)
        expected = oracle(server)
        source = engine.open_source(server.url(), tmp_path)
        client = server.client(0)

        def write_after_first_chunk(_: int) -> None:  # the fork has happened once bytes arrive
            try:
                client.set("after-the-fork", "x")
            except redis.RedisError:
                pass

        taken = take(source, tmp_path / "dump.rdb", chunk_size=64, on_chunk=write_after_first_chunk)
    assert {key: taken.details["rdb"][key] for key in expected} == expected


# Empty collections: Redis skips them as it loads a file ("skipping empty key"), so they are no keys of the backup.
EMPTY_LISTPACK = (7).to_bytes(4, "little") + (0).to_bytes(2, "little") + b"\xff"
PAIR_LISTPACK = (13).to_bytes(4, "little") + (2).to_bytes(2, "little") + b"\x81f\x02\x81v\x02\xff"  # "f", "v"
EMPTY_ZIPLIST = (11).to_bytes(4, "little") + (10).to_bytes(4, "little") + (0).to_bytes(2, "little") + b"\xff"
EMPTIES = {
    "an empty list, set, hash and sorted set by count": (
        b"\x01" + string(b"l") + length(0) + b"\x02" + string(b"s") + length(0) + b"\x04" + string(b"h") + length(0)
        + b"\x05" + string(b"z") + length(0), 0),
    "an empty hash listpack": (b"\x10" + string(b"h") + string(EMPTY_LISTPACK), 0),
    "a hash listpack with one pair": (b"\x10" + string(b"h") + string(PAIR_LISTPACK), 1),
    "an empty sorted set listpack": (b"\x11" + string(b"z") + string(EMPTY_LISTPACK), 0),
    "an empty hash ziplist": (b"\x0d" + string(b"h") + string(EMPTY_ZIPLIST), 0),
    "an empty list ziplist": (b"\x0a" + string(b"l") + string(EMPTY_ZIPLIST), 0),
    "a quicklist of one empty ziplist": (b"\x0e" + string(b"l") + length(1) + string(EMPTY_ZIPLIST), 0),
    "a quicklist 2 of one empty listpack": (b"\x12" + string(b"l") + length(1) + length(2) + string(EMPTY_LISTPACK), 0),
    "a quicklist 2 of an empty and a full listpack": (
        b"\x12" + string(b"l") + length(2) + length(2) + string(EMPTY_LISTPACK) + length(2) + string(PAIR_LISTPACK), 1),
    "a quicklist 2 of one plain node": (b"\x12" + string(b"l") + length(1) + length(1) + string(b"x" * 30), 1),
}


@pytest.mark.parametrize("name", EMPTIES)
def test_an_empty_collection_is_not_counted_as_redis_skips_it_on_load(name: str, tmp_path: Path) -> None:
    record, expected = EMPTIES[name]
    data = rdb_file(b"\xfe\x00" + b"\x00" + string(b"kept") + string(b"v") + record, b"REDIS0010")
    (tmp_path / "load").mkdir()
    (tmp_path / "load" / "dump.rdb").write_bytes(data)
    with redis_server(tmp_path / "load") as server:  # the oracle: what a restore of the file holds
        assert server.client(0).dbsize() == 1 + expected
    for size in (1, 5, 4096):
        assert count(data, size).finish() == counted({"db0": 1 + expected}, {"db0": 0})


def test_a_snapshot_without_a_checksum_that_its_records_show_cut_short_is_refused() -> None:
    whole = b"REDIS0010" + b"\xfe\x00" + RECORDS["string"] + RECORDS["hash"] + b"\xff"
    for body in (whole[:-5] + b"\xff", whole[:-1] + b"\x00\xff"):  # a record cut short; a byte too many
        check = rdb.RdbCheck(threading.Event(), {}, count_keys=True)
        check.feed(body + bytes(8))  # rdbchecksum no: 8 zero bytes where the CRC64 goes
        with pytest.raises(IntegrityError, match="the server writes no checksum"):
            check.finish()
    details: dict = {}
    check = rdb.RdbCheck(threading.Event(), details, count_keys=True)
    check.feed(whole + bytes(8))
    assert "rdbchecksum no" in check.finish() and details["keys"] == {"db0": 2}
    unknown = b"REDIS0010" + b"\xfe\x00" + UNREADABLE["a value type newer than this worker"][0] + b"\xff" + bytes(8)
    check = rdb.RdbCheck(threading.Event(), details := {}, count_keys=True)
    check.feed(unknown)  # a record the walk does not know: it cannot tell, so the file is kept, uncounted
    assert "rdbchecksum no" in check.finish() and "value type 26" in details["uncounted"]
