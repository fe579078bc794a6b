"""The streaming RDB check: header at the first bytes, EOF opcode and Redis's CRC64 at the end."""

from pathlib import Path
import subprocess
import threading

import pytest

from jobs.engines import rdb
from jobs.engines import redis as engine
from jobs.errors import Cancelled, IntegrityError
from tests.redis.servers import fill, redis_server, take

AUX = b"\xfa\x09redis-ver\x067.0.15\xfa\x0aredis-bits\xc0\x40"
BODY = AUX + b"\xfe\x00\xfb\x01\x00\x00\x05hello\x05world"


def synthetic(header: bytes = b"REDIS0010", body: bytes = BODY, checksum: int | None = None) -> bytes:
    """Return an RDB file: header, body, EOF opcode and the CRC64 of all that (or `checksum`)."""
    data = header + body + b"\xff"
    return data + (rdb.crc64(data) if checksum is None else checksum).to_bytes(8, "little")


def check(data: bytes, chunk_size: int = 1 << 20, details: dict | None = None) -> str:
    checker = rdb.RdbCheck(threading.Event(), details)
    for start in range(0, len(data), chunk_size):
        checker.feed(data[start:start + chunk_size])
    return checker.finish()


@pytest.fixture(scope="module")
def real_rdb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("real")
    with redis_server(directory / "server") as server:
        fill(server)
        return take(engine.open_source(server.url(), directory), directory / "dump.rdb").path.read_bytes()


def test_crc64_is_the_one_redis_uses() -> None:
    assert rdb.crc64(b"123456789") == 0xE9C6D914C4B8D9CA  # the check value printed by redis crc64.c's test
    assert rdb.crc64(b"456789", rdb.crc64(b"123")) == rdb.crc64(b"123456789")
    assert rdb.crc64(b"") == 0


def test_a_whole_rdb_passes_in_any_chunking() -> None:
    data = synthetic()
    for size in (1, 2, 7, 8, 9, 10, 17, len(data) - 1, len(data)):
        details: dict = {}
        assert check(data, size, details) == "RDB header and CRC64"
        assert details == {"version": 10, "checksum": "crc64"}


def test_a_real_snapshot_passes_in_any_chunking(real_rdb: bytes) -> None:
    for size in (3, 8, 4096, 1 << 20):
        assert check(real_rdb, size) == "RDB header and CRC64"


def test_every_flipped_byte_of_a_small_rdb_is_caught() -> None:
    data = synthetic()
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(IntegrityError):
            check(bytes(damaged), 5)


def test_a_flipped_byte_in_a_real_snapshot_is_caught_as_redis_check_rdb_does(real_rdb: bytes, tmp_path: Path) -> None:
    damaged = bytearray(real_rdb)
    damaged[len(damaged) // 2] ^= 0x40
    with pytest.raises(IntegrityError, match="CRC64"):
        check(bytes(damaged))
    (tmp_path / "damaged.rdb").write_bytes(damaged)
    assert subprocess.run(["redis-check-rdb", str(tmp_path / "damaged.rdb")], capture_output=True).returncode != 0


def test_every_truncation_is_caught(real_rdb: bytes) -> None:
    for length in (0, 5, 9, 10, 17, 100, len(real_rdb) // 2, len(real_rdb) - 9, len(real_rdb) - 8, len(real_rdb) - 1):
        with pytest.raises(IntegrityError, match="truncated|corrupt"):
            check(real_rdb[:length], 4096)


def test_bytes_that_are_not_an_rdb_are_rejected_at_the_first_chunk() -> None:
    checker = rdb.RdbCheck()
    with pytest.raises(IntegrityError, match="not an RDB file"):
        checker.feed(b"SQLite format 3\x00" + bytes(100))
    with pytest.raises(IntegrityError, match="not an RDB file"):
        rdb.RdbCheck().feed(b"\x28\xb5\x2f\xfd" + bytes(20))  # a zstd frame, not its content


def test_a_zero_checksum_means_the_server_disabled_checksums_and_is_accepted() -> None:
    details: dict = {}
    assert "rdbchecksum no" in check(synthetic(checksum=0), 3, details)
    assert details["checksum"] == "disabled"


def test_a_zero_checksum_still_needs_the_eof_opcode() -> None:
    data = synthetic(checksum=0)
    with pytest.raises(IntegrityError):
        check(data[:-9] + b"\x00" + data[-8:])


def test_valkey_9_headers_are_accepted() -> None:
    details: dict = {}
    assert check(synthetic(header=b"VALKEY080"), 4, details) == "RDB header and CRC64"
    assert details["version"] == 80


def test_rdb_files_older_than_version_5_have_no_checksum_but_need_the_eof_opcode() -> None:
    old = b"REDIS0004" + BODY + b"\xff"
    assert "no checksum" in check(old, 3)
    with pytest.raises(IntegrityError, match="EOF opcode"):
        check(old[:-1], 3)


def test_the_checker_stops_when_the_worker_stops(tmp_path: Path) -> None:
    cancel = threading.Event()
    with rdb.checker(tmp_path, cancel) as checker:
        checker.feed(synthetic()[:20])
        cancel.set()
        with pytest.raises(Cancelled):
            checker.feed(b"more")


def verify(raw: Path) -> str:
    """Check the RDB file at `raw` with the engine's checker, as a verify of a backup of it does."""
    with engine.checker(raw.parent, threading.Event()) as checker:
        checker.feed(raw.read_bytes())
        return checker.finish()


def test_verify_reads_an_rdb_file_and_rejects_a_damaged_one(real_rdb: bytes, tmp_path: Path) -> None:
    good = tmp_path / "good.rdb"
    good.write_bytes(real_rdb)
    assert verify(good) == "RDB header and CRC64"
    bad = tmp_path / "bad.rdb"
    bad.write_bytes(real_rdb[:-1] + bytes([real_rdb[-1] ^ 0xFF]))
    with pytest.raises(IntegrityError):
        verify(bad)
