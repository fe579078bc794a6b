"""Exact row counts of a pg_dump custom-format archive, taken from the bytes as they stream past.

The pipeline feeds `ArchiveRows` the same chunks it compresses, so the counts are those of the snapshot pg_dump
read, measured on the backup itself. Nothing is seeked and at most a few KiB are held back between chunks.

The format, as PostgreSQL's pg_backup_archiver.c (WriteHead, WriteToc, WriteInt, WriteStr) and
pg_backup_custom.c (_StartData, _WriteData, _EndData, the large-object block) write it, for the archive versions
1.12 to 1.16 (pg_dump 9.6 to 17; 18 writes 1.16 too). Checked against real archives of pg_dump 15 (1.14), 16.2 (1.15)
and 18.6 (1.16) written to a pipe, as the worker reads them (pg_dump 16 writing to a seekable stdout appends a second
table of contents after the data, which reads here as bytes after the end: no counts, the backup unaffected):

- An integer is a sign byte (1 for negative) then `intSize` bytes, least significant first; a string is an
  integer length (-1 for NULL) then that many bytes.
- The header: `PGDMP`, the version bytes (major, minor, revision), intSize, offSize, the format (1: custom); the
  compression (an integer level before 1.15, one byte naming the algorithm from 1.15; 0 means none); seven
  integers of creation time; the database name, the server's and pg_dump's versions.
- The table of contents: an integer count, then per entry its dump id, whether it had a data dumper, the catalog
  table oid and oid, tag, desc, section, definition, drop statement, COPY statement, namespace, tablespace, table
  access method (1.14+), relation kind (an integer, 1.16+), owner, "false" (WITH OIDS), the dependencies (strings
  up to a NULL) and the custom format's offset (a flag byte, 3 when the entry has no data, and offSize bytes).
- Then one block per entry with data, in TOC order: a type byte and the dump id. A data block (1) is chunks,
  each an integer length and that many bytes, up to a zero length. A large-object block (3) is, per object, its
  oid and chunks up to a zero length, then a zero oid.
- A `TABLE DATA` entry's block holds its `COPY ... FROM stdin` text: one row per line, newlines inside values
  escaped as `\\n`, so rows are the newlines of the chunks' bytes. pg_dump writes `\\.` and two empty lines after
  the rows, which are not rows. Large objects are not rows.

An archive this module cannot read (another version, compression, data written as INSERT statements, a cut or
garbled stream) gives no counts and a reason, never an error: the backup's proof is pg_restore's, not this.
"""

from collections.abc import Generator
import re
import struct
from typing import Any

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
BLK_DATA, BLK_BLOBS = 1, 3
OFFSET_NO_DATA = 3  # the offset flag of an entry without a data block
FIRST, LAST = (1, 12), (1, 16)  # the archive versions pg_dump 9.6 to 17 write
KEEP = 4096  # longest string kept (a tag, a namespace); the rest of a longer one is skipped
SMALL = 64  # a chunk this short is never split: its bytes wait for the next feed (the COPY terminator is 5)
TERMINATOR = b"\\.\n\n\n"  # what pg_dump writes after a table's rows
NEWLINE = b"\n"
_SIMPLE = re.compile(r"[a-z_][a-z0-9_$]*\Z")
# How many bytes of a 4-byte length under 65536 are a newline (the low two; the high two are 0).
_LENGTH_NEWLINES = bytes(((length & 0xFF) == 10) + ((length >> 8) == 10) for length in range(65536))

Request = int | None  # > 0: that many bytes; < 0: skip that many; None: walk the data block just opened


class Unreadable(Exception):
    """The archive is not one this module reads; the message says why."""


def table_key(schema: str, table: str) -> str:
    """Return how `counts.tables` names a PostgreSQL table: `schema.table`, each part double-quoted (quotes
    doubled) unless it is a plain lower-case identifier, so that `"a.b".c` and `a."b.c"` stay apart."""
    return ".".join(part if _SIMPLE.match(part) else '"' + part.replace('"', '""') + '"' for part in (schema, table))


class ArchiveRows:
    """Counts the rows of each table in a custom-format archive fed in order, chunk by chunk.

    `feed` never raises; `result()` after the last chunk returns the counts, or None with `problem` saying why
    there are none."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.version: tuple[int, int] | None = None
        self.tables: dict[str, int] = {}
        self._carry = b""
        self._parser = self._parse()
        self._request: Request = next(self._parser)
        self._size = 5  # bytes of an integer: the sign and intSize
        self._unpack = struct.Struct("<BI").unpack_from
        self._rows = 0  # rows of the data block being walked
        self._left = 0  # bytes of the current chunk still to come in the next feed
        self._ended = False

    # --- driving ----------------------------------------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the archive."""
        if self.problem is not None or self._ended:
            if self._ended and len(chunk):
                self.problem = "bytes follow the end of the archive"
            return
        data = self._carry + bytes(chunk) if self._carry else bytes(chunk)
        self._carry = b""
        try:
            self._run(data)
        except Unreadable as error:
            self._fail(str(error))
        except (struct.error, ValueError, IndexError) as error:  # garbled bytes: never the backup's problem
            self._fail(f"the archive could not be parsed ({error})")

    def _run(self, data: bytes) -> None:
        position, end = 0, len(data)
        while True:
            request = self._request
            if request is None:
                position = self._walk(data, position, end)
                if self._request is None:  # the block goes on in the next feed
                    return
            elif request > 0:
                if end - position < request:
                    self._carry = data[position:]
                    return
                value = data[position:position + request]
                position += request
                self._advance(value)
            else:
                take = min(-request, end - position)
                position += take
                if take < -request:
                    self._request = request + take
                    return
                self._advance(None)
            if self._ended:
                if position < end:
                    self.problem = "bytes follow the end of the archive"
                return

    def _advance(self, value: bytes | int | None) -> None:
        try:
            self._request = self._parser.send(value)
        except StopIteration:
            self._ended = True

    def _fail(self, why: str) -> None:
        self.problem = why
        self._parser.close()

    def result(self) -> dict[str, Any] | None:
        """Return `{"unit": "rows", "total": N, "tables": {key: rows}}` once the whole archive was read, else None
        (and `problem` says why)."""
        if self.problem is None and not self._ended:
            self.problem = "the archive ends before its last data block (it was cut short)"
        if self.problem is not None:
            return None
        return {"unit": "rows", "total": sum(self.tables.values()), "tables": dict(self.tables)}

    # --- the data blocks of tables: the hot path ----------------------------------------------------------------

    def _walk(self, data: bytes, position: int, end: int) -> int:
        """Count the rows of the table's block from `position`; return where the walk stopped. At the block's end,
        hand the rows to the parser.

        Rows are the newlines of the chunks' bytes: all the newlines of the bytes walked (one C pass), less those
        that are bytes of a chunk's length (the lengths are read anyway to find the next chunk) and those of the
        terminator chunk. That counts every chunking exactly, a chunk per row (what pg_dump writes) or not."""
        entry = position
        rows, left, size, unpack = self._rows, self._left, self._size, self._unpack
        lengths = _LENGTH_NEWLINES if size == 5 else None
        skipped = 0  # newlines walked that are not rows
        if left:  # the rest of a chunk begun in the previous feed
            take = min(left, end - position)
            position += take
            left -= take
        while not left:
            if end - position < size:
                self._carry = data[position:]
                break
            sign, length = unpack(data, position)
            if sign:
                raise Unreadable("a data chunk has a negative length")
            if not length:  # a zero length ends the block
                position += size
                self._rows, self._left = 0, 0
                self._advance(rows + data.count(NEWLINE, entry, position) - skipped)
                return position
            stop = position + size + length
            if stop > end and length <= SMALL:  # a short chunk is only read whole
                self._carry = data[position:]
                break
            if lengths is not None and length < 65536:
                skipped += lengths[length]
            else:
                skipped += data.count(NEWLINE, position + 1, position + size)
            if stop <= end:
                if length == 5 and data.startswith(TERMINATOR, stop - 5):
                    skipped += 3
                position = stop
            else:
                left = stop - end
                position = end
        self._rows, self._left = rows + data.count(NEWLINE, entry, position) - skipped, left
        return end if self._carry else position

    # --- everything else: header, table of contents, block headers, large objects --------------------------------

    def _parse(self) -> Generator[Request, Any, None]:
        head = yield len(MAGIC) + 6
        if head[:5] != MAGIC:
            raise Unreadable("it does not start with PGDMP")
        major, minor, revision, int_size, off_size, form = head[5:]
        self.version = (major, minor)
        if not FIRST <= (major, minor) <= LAST:
            raise Unreadable(f"archive version {major}.{minor}.{revision} is not one this worker reads "
                             f"({FIRST[0]}.{FIRST[1]} to {LAST[0]}.{LAST[1]}, pg_dump 9.6 to 17)")
        if form != FORMAT_CUSTOM:
            raise Unreadable(f"archive format {form} is not the custom format")
        if not 1 <= int_size <= 8 or not 1 <= off_size <= 16:
            raise Unreadable(f"integer size {int_size} or offset size {off_size} is not plausible")
        self._size = 1 + int_size
        self._unpack = struct.Struct("<B" + {1: "B", 2: "H", 4: "I", 8: "Q"}.get(int_size, f"{int_size}s")).unpack_from
        if int_size not in (1, 2, 4, 8):
            raise Unreadable(f"integer size {int_size} is not one pg_dump writes")

        def integer(raw: bytes) -> int:
            value = int.from_bytes(raw[1:], "little")
            return -value if raw[0] else value

        compression = (yield 1)[0] if (major, minor) >= (1, 15) else integer((yield self._size))
        if compression:
            raise Unreadable("the archive is compressed (the worker dumps with --compress=0)")
        for _ in range(7):  # creation time
            yield -self._size
        for _ in range(3):  # database name, server version, pg_dump version
            yield from self._skip_string()

        entries = integer((yield self._size))
        data_entries: dict[int, str | None] = {}  # dump id -> table key (TABLE DATA with COPY), or None
        for _ in range(entries):
            dump_id = integer((yield self._size))
            yield -self._size  # had a dumper
            yield from self._skip_string()  # catalog table oid
            yield from self._skip_string()  # oid
            tag = yield from self._string()
            desc = yield from self._string()
            yield -self._size  # section
            yield from self._skip_string()  # definition
            yield from self._skip_string()  # drop statement
            copy = yield from self._string(8)
            namespace = yield from self._string()
            yield from self._skip_string()  # tablespace
            if (major, minor) >= (1, 14):
                yield from self._skip_string()  # table access method
            if (major, minor) >= (1, 16):
                yield -self._size  # relation kind
            yield from self._skip_string()  # owner
            yield from self._skip_string()  # WITH OIDS
            while (yield from self._string(0)) is not None:  # dependencies, up to a NULL
                pass
            flag = (yield 1 + off_size)[0]
            if flag != OFFSET_NO_DATA:
                is_rows = desc == "TABLE DATA" and (copy or "").startswith("COPY ")
                if desc == "TABLE DATA" and not is_rows:
                    raise Unreadable(f"the data of {tag} is not COPY text (pg_dump --inserts?)")
                data_entries[dump_id] = table_key(namespace or "", tag or "") if is_rows else None

        while data_entries:  # every entry with data has its block, in TOC order
            header = yield 1 + self._size
            kind, dump_id = header[0], integer(header[1:])
            if dump_id not in data_entries:
                raise Unreadable(f"a data block names the dump id {dump_id}, which no entry of the table of contents "
                                 "still waiting for its data has")
            key = data_entries.pop(dump_id)
            if kind == BLK_DATA and key is not None:
                found = yield None  # the walk counts the rows, then sends their number here
                self.tables[key] = self.tables.get(key, 0) + found
            elif kind == BLK_DATA:
                yield from self._skip_chunks()
            elif kind == BLK_BLOBS:
                while integer((yield self._size)):  # each large object's oid, up to a zero
                    yield from self._skip_chunks()
            else:
                raise Unreadable(f"unknown data block type {kind}")

    def _string(self, keep: int = KEEP) -> Generator[Request, bytes | None, str | None]:
        """Read a string; keep its first `keep` bytes (the rest is skipped). Return None for a NULL string."""
        raw = yield self._size
        length = int.from_bytes(raw[1:], "little")
        if raw[0]:
            return None
        kept = min(length, keep)
        value = (yield kept) if kept else b""
        if length > kept:
            yield kept - length
        return value.decode("utf-8", "replace")

    def _skip_string(self) -> Generator[Request, bytes | None, None]:
        raw = yield self._size
        length = int.from_bytes(raw[1:], "little")
        if not raw[0] and length:
            yield -length

    def _skip_chunks(self) -> Generator[Request, bytes | None, None]:
        """Skip length-prefixed chunks up to a zero length."""
        while True:
            raw = yield self._size
            length = int.from_bytes(raw[1:], "little")
            if raw[0]:
                raise Unreadable("a data chunk has a negative length")
            if not length:
                return
            yield -length
