"""The RDB file's own proof, checked as the bytes stream past: header, end-of-file opcode and trailing CRC64.

An RDB file is `REDIS` + 4 ASCII digits (Valkey 9+: `VALKEY` + 3 digits), the body, the EOF opcode 0xFF and
8 bytes: the CRC64 of every byte before them, little-endian (Redis's `crc64.c`: Jones polynomial, reflected,
init 0, no final xor). A server running with `rdbchecksum no` writes 0 there; files before RDB version 5 have no
checksum at all. The CRC runs in C (anycrc, carry-less multiply), a few GB/s. A snapshot's check also counts the
keys the file holds per database (jobs.engines.rdb_keys), for the drills to compare with; an artifact's check
(`checker`) does not.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import re
import threading
from typing import Any

import anycrc
import structlog

from jobs.engines.rdb_keys import EOF, FIRST_CHECKSUMMED_VERSION, HEADER_SIZE, TRAILER_SIZE, KeyCounter
from jobs.errors import Cancelled, IntegrityError

EOF_OPCODE = EOF
CHECK = "RDB header and CRC64"
_HEADER = re.compile(rb"(?:REDIS(\d{4})|VALKEY(\d{3}))\Z")
_CRC64 = anycrc.Model("CRC64-REDIS")

log = structlog.get_logger("jobs.engines.rdb")


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Return Redis's CRC64 of `data`, continuing from `crc` (0 to start)."""
    return _CRC64.calc(data, crc) if len(data) else crc


def parse_header(head: bytes) -> tuple[str, int]:
    """Given the first 9 bytes of a stream, return (magic, RDB version). Raise IntegrityError if not an RDB file."""
    found = _HEADER.match(head[:HEADER_SIZE])
    if not found:
        shown = head[:HEADER_SIZE].decode("ascii", "replace")
        raise IntegrityError(f"the snapshot is not an RDB file (it starts with {shown!r}, not REDIS and a version)")
    digits = found.group(1) or found.group(2)
    return ("REDIS" if found.group(1) else "VALKEY"), int(digits)


class RdbCheck:
    """Checks an RDB stream fed in order: the header at once, the EOF opcode and CRC64 at the end.

    The last 8 bytes seen are held back from the CRC: they are the checksum if no more bytes come. After
    `finish()`, `details` holds the RDB version and whether the server wrote a checksum; with `count_keys`, also
    the keys per database (`keys`) and those with a TTL (`expires`), or why they could not be counted (`uncounted`).
    """

    path: Path | None = None  # the check writes no copy of the stream (see the engine interface)

    def __init__(self, cancel: threading.Event | None = None, details: dict[str, Any] | None = None,
                 count_keys: bool = False) -> None:
        self.cancel = cancel
        self.details = details if details is not None else {}
        self.counter = KeyCounter() if count_keys else None
        self._head = bytearray()
        self._version: int | None = None
        self._crc = 0
        self._last = -1  # the last byte included in the CRC: the EOF opcode once the stream is whole
        self._tail = bytearray()  # the last (up to) 8 bytes, not yet in the CRC
        self._size = 0

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the stream. Raise IntegrityError as soon as the header is wrong."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the worker is stopping; the RDB check was interrupted")
        view = memoryview(chunk)
        if not len(view):
            return
        self._size += len(view)
        if self.counter is not None:
            self.counter.feed(view)
        if self._version is None:
            self._head += view[:HEADER_SIZE - len(self._head)]
            if len(self._head) == HEADER_SIZE:
                self._version = parse_header(bytes(self._head))[1]
        if len(self._tail) + len(view) <= TRAILER_SIZE:
            self._tail += view
            return
        # Everything but the newest 8 bytes of (tail + chunk) goes into the CRC.
        spill = len(self._tail) + len(view) - TRAILER_SIZE
        from_tail = min(spill, len(self._tail))
        if from_tail:
            self._add(self._tail[:from_tail])
            del self._tail[:from_tail]
        from_chunk = spill - from_tail
        if from_chunk:
            self._add(view[:from_chunk])
        self._tail += view[from_chunk:]

    def _add(self, data: bytes | bytearray | memoryview) -> None:
        self._crc = crc64(data, self._crc)
        self._last = data[-1]

    def finish(self) -> str:
        """End of stream: return what passed. Raise IntegrityError for a short, truncated or corrupt file."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("the worker is stopping; the RDB check was interrupted")
        if self._version is None:
            raise IntegrityError(f"the RDB snapshot is truncated: {self._size} bytes, shorter than its 9-byte header")
        version = self._version
        self.details.update({"version": version})
        if version < FIRST_CHECKSUMMED_VERSION:
            # No trailer: the whole stream is in head+crc'd bytes+tail; the last byte must be the EOF opcode.
            last = self._tail[-1] if self._tail else self._last
            if self._size <= HEADER_SIZE or last != EOF_OPCODE:
                raise IntegrityError(f"the RDB snapshot (version {version}) is truncated: it does not end with the EOF opcode")
            self.details["checksum"] = "none"
            self._count(proven=False)
            return f"RDB header and EOF opcode (RDB version {version} has no checksum)"
        if self._size < HEADER_SIZE + 1 + TRAILER_SIZE or self._last != EOF_OPCODE:
            raise IntegrityError(f"the RDB snapshot is truncated or corrupt: {self._size} bytes, and no EOF opcode before the checksum")
        stored = int.from_bytes(self._tail, "little")
        if stored == 0:
            self.details["checksum"] = "disabled"
            self._count(proven=False)
            return "RDB header and EOF opcode (no CRC64: the server runs with rdbchecksum no)"
        if stored != self._crc:
            raise IntegrityError(f"the RDB snapshot is corrupt: its CRC64 is {self._crc:016x} but the file says {stored:016x}")
        self.details["checksum"] = "crc64"
        self._count(proven=True)
        return CHECK

    def _count(self, proven: bool) -> None:
        """Record the keys the walk counted in `details`, or why it could not. A file without a checksum (not
        `proven`) that the walk shows damaged (cut short, overrun, an encoding no format has) is refused, since the
        walk is then its only proof: raise IntegrityError. One whose value type the walk does not know is kept,
        uncounted."""
        if self.counter is None:
            return
        counts = self.counter.finish()
        if counts is None and not proven and self.counter.damaged:
            raise IntegrityError(f"the RDB snapshot is truncated or corrupt: {self.counter.why}; "
                                 "the server writes no checksum (rdbchecksum no), so its records are the only proof")
        if counts is None:
            self.details["uncounted"] = self.counter.problem
            log.warning("rdb.keys_not_counted", reason=self.counter.problem,
                        consequence="the backup is kept; its drill cannot compare keys")
        else:
            self.details.update(counts)

    def close(self) -> None:
        """Nothing to release; here for the Check protocol."""

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._size

    @property
    def version(self) -> int | None:
        """The RDB version from the header, once 9 bytes were fed."""
        return self._version


@contextmanager
def checker(workdir: Path, cancel: threading.Event) -> Iterator[RdbCheck]:
    """Return the check for an existing RDB artifact's raw bytes; `workdir` is unused (nothing is written)."""
    check = RdbCheck(cancel)
    try:
        yield check
    finally:
        check.close()
