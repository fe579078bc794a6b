"""The keys an RDB file holds, counted per database as its bytes stream past (and those that may expire).

The walk reads the file's structure only: opcodes, lengths, the length of every string, and the element count in
the header of each packed container; the strings' bytes are skipped, not kept (a value of any size costs the walk a
few bytes of memory). A key is one record: its EXPIRETIME (then it has a TTL), IDLE or FREQ opcodes, then its type,
its name and its value. The formats are those of Redis's `rdb.c` (value types 0-25, opcodes 244-255) and Valkey's
(the same up to type 21; in a `VALKEY` file, type 22 is Valkey 9's hash with field TTLs).

The counts are what a restore of the file holds, for the drill to compare a restored copy with: measured on the
file, never taken from the server (whose keyspace moves on while it forks). An empty collection is no key (Redis
skips it as it loads). `expires` counts the keys with a TTL (as INFO keyspace does), and `hashes_with_field_ttls`
the hashes without one whose fields have TTLs: both may be gone by the time the file is loaded.

A file the walk cannot read to its end has no counts: `finish()` returns None and `problem` says why. When it met
something it does not know (a value type newer than this worker), the backup is still proven by its CRC64 and only
the drill's comparison of keys is lost. When it found the file damaged (cut short, overrun, an encoding no version
of the format has), `damaged` is set: the check refuses such a file when the server wrote no checksum.
"""

from collections.abc import Generator, Mapping
from typing import Any

from jobs.manifest import whole_numbers

WAIT = Generator[None, None, None]
# The frame of an RDB file (jobs.engines.rdb checks it): a 9-byte header (`REDIS` + 4 digits, or `VALKEY` + 3), the
# body, the EOF opcode and, from RDB version 5, an 8-byte CRC64.
HEADER_SIZE = 9
TRAILER_SIZE = 8
FIRST_CHECKSUMMED_VERSION = 5

# Opcodes (Redis src/rdb.h).
SLOT_INFO, FUNCTION2, FUNCTION_PRE_GA, MODULE_AUX, IDLE, FREQ, AUX, RESIZEDB, EXPIRETIME_MS, EXPIRETIME, SELECTDB, EOF = range(244, 256)
# Value types made of one string holding a container, and that container's kind.
_PACKED = {9: "zipmap", 10: "ziplist", 11: "intset", 12: "ziplist", 13: "ziplist", 16: "listpack", 17: "listpack",
           20: "listpack"}
_COUNT_AT = {"zipmap": (0, 1), "ziplist": (8, 2), "intset": (4, 4), "listpack": (4, 2)}  # its element count: offset, size
_STRINGS = {1: 1, 2: 1, 4: 2}  # type: strings per element after the element count (list, set, hash)
_WIDE_LENGTH = {0x80: 4, 0x81: 8}  # a length's first byte: a 32- or 64-bit big-endian length follows
ABSENT, PRESENT, VOLATILE = range(3)  # a key Redis skips as it loads the file (empty), a key, one that may expire
_STREAMS = (15, 19, 21)
_MODULE_EOF, _MODULE_SINT, _MODULE_UINT, _MODULE_FLOAT, _MODULE_DOUBLE, _MODULE_STRING = range(6)


class Unreadable(Exception):
    """The file holds something this walk does not know how to step over (a newer format, perhaps)."""


class Damaged(Unreadable):
    """The file holds what no version of the format has (a length or string encoding that does not exist)."""


class KeyCounter:
    """Counts the keys of an RDB stream fed in order, per database (`db0`, `db1`, … as INFO keyspace names them)."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.expires: dict[str, int] = {}
        self.volatile: dict[str, int] = {}  # hashes with field TTLs (and no key TTL)
        self.problem: str | None = None  # "the RDB's keys were not counted: " and `why`
        self.why: str | None = None
        self.damaged = False  # the file is cut short or overrun, or holds an encoding no format has
        self._buf = bytearray()
        self._skip = 0  # bytes still to discard from the next chunks (the rest of a long string)
        self._fed = 0
        self._version: int | None = None
        self._after_eof: int | None = None  # bytes seen after the EOF opcode, once the walk reached it
        self._walk = self._records()
        next(self._walk)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next bytes of the stream; a file the walk cannot read only sets `problem`, never raises."""
        view = memoryview(chunk)
        self._fed += len(view)
        if self.problem is not None:
            return
        if self._after_eof is not None:
            self._after_eof += len(view)
            return
        if self._skip:
            taken = min(self._skip, len(view))
            self._skip -= taken
            view = view[taken:]
            if self._skip or not len(view):
                return
        self._buf += view
        try:
            self._walk.send(None)
        except StopIteration:
            pass
        except Unreadable as error:
            self.damaged = isinstance(error, Damaged)
            self._give_up(str(error))
        except Exception as error:  # noqa: BLE001 - a walk that trips must never fail the backup it counts
            self._give_up(f"the walk failed ({type(error).__name__}: {error})")

    def _give_up(self, why: str) -> None:
        self.why = why
        self.problem = f"the RDB's keys were not counted: {why}"
        self._buf = bytearray()
        self._walk.close()

    def finish(self) -> dict[str, Any] | None:
        """End of stream: return {"keys": {db: n}, "expires": {db: n}, "hashes_with_field_ttls": {db: n},
        "counted_in": "file"}, or None (with `problem` set) when the walk did not end at the file's EOF opcode
        followed by exactly its checksum (then `damaged`, unless the walk had stopped at something it does not
        know, as a newer format's type)."""
        if self.problem is not None:
            return None
        if self._after_eof is None:
            self.damaged = True
            self._give_up(f"the stream ended ({self._fed} bytes) inside a record, before the EOF opcode")
            return None
        trailer = TRAILER_SIZE if (self._version or 0) >= FIRST_CHECKSUMMED_VERSION else 0
        if self._after_eof != trailer:
            self.damaged = True
            self._give_up(f"the EOF opcode was followed by {self._after_eof} bytes, not the {trailer} of a checksum")
            return None
        return {"keys": dict(self.keys), "expires": {db: self.expires.get(db, 0) for db in self.keys},
                "hashes_with_field_ttls": {db: self.volatile.get(db, 0) for db in self.keys}, **MEASURED}

    def _records(self) -> Generator[None, None, None]:
        """The walk: a generator resumed by feed() after each chunk; it waits (yields) only when the bytes it needs
        are not buffered yet, so most records are read without leaving it."""
        buf = self._buf
        p = 0
        keys, expires, volatile = self.keys, self.expires, self.volatile

        def wait(size: int) -> WAIT:
            nonlocal p
            while len(buf) - p < size:
                del buf[:p]
                p = 0
                yield

        def skip(size: int) -> WAIT:
            nonlocal p
            held = len(buf) - p
            if size <= held:
                p += size
                return
            del buf[:]
            p = 0
            self._skip = size - held
            yield  # feed() discards the rest before resuming the walk

        def length() -> Generator[None, None, tuple[int, bool]]:
            """Read a length: (value, False), or (encoding, True) for a string stored as an integer or LZF."""
            nonlocal p
            if len(buf) <= p:
                yield from wait(1)
            first = buf[p]
            kind = first >> 6
            if kind == 0 or kind == 3:
                p += 1
                return first & 0x3F, kind == 3
            if kind == 1:
                if len(buf) - p < 2:
                    yield from wait(2)
                value = ((first & 0x3F) << 8) | buf[p + 1]
                p += 2
                return value, False
            size = _WIDE_LENGTH.get(first)
            if size is None:
                raise Damaged(f"unknown length encoding {first:#04x}")
            if len(buf) - p < 1 + size:
                yield from wait(1 + size)
            value = int.from_bytes(buf[p + 1:p + 1 + size], "big")
            p += 1 + size
            return value, False

        def string_now() -> bool:
            """Step over a string wholly in the buffer with a short length or as a small integer; return whether
            it did (else the caller takes the general path)."""
            nonlocal p
            end = len(buf)
            if p >= end:
                return False
            first = buf[p]
            kind = first >> 6
            if kind == 0:
                size = 1 + first
            elif kind == 1:
                if p + 1 >= end:
                    return False
                size = 2 + (((first & 0x3F) << 8) | buf[p + 1])
            elif first in (0xC0, 0xC1, 0xC2):  # an integer of 1, 2 or 4 bytes
                size = 1 + (1 << (first & 0x3F))
            else:
                return False
            if p + size > end:
                return False
            p += size
            return True

        def rest(value: int, encoded: bool) -> WAIT:
            """Step over a string's bytes once its length (or encoding) was read."""
            if not encoded:
                yield from skip(value)
            elif value in (0, 1, 2):
                yield from skip(1 << value)
            elif value == 3:  # LZF: compressed length, original length, the compressed bytes
                compressed, _ = yield from length()
                yield from length()
                yield from skip(compressed)
            else:
                raise Damaged(f"unknown string encoding {value}")

        def string_later() -> WAIT:
            """Step over a string string_now() could not (not wholly buffered, long, or LZF)."""
            yield from rest(*(yield from length()))

        def string() -> WAIT:
            if not string_now():
                yield from string_later()

        def packed(container: str) -> Generator[None, None, bool]:
            """Step over a string holding a ziplist, listpack, intset or zipmap; return whether it holds no element
            (read from its header: Redis skips such a key as it loads the file)."""
            value, encoded = yield from length()
            if encoded:  # an LZF block: Redis compresses only strings over 20 bytes, never an empty container
                yield from rest(value, encoded)
                return False
            offset, size = _COUNT_AT[container]
            head = min(value, offset + size)
            if len(buf) - p < head:
                yield from wait(head)
            empty = value >= offset + size and not any(buf[p + offset:p + offset + size])
            yield from skip(value)
            return empty

        def number() -> Generator[None, None, int]:
            return (yield from length())[0]

        def module_value() -> WAIT:
            while True:
                opcode = yield from number()
                if opcode == _MODULE_EOF:
                    return
                if opcode in (_MODULE_SINT, _MODULE_UINT):
                    yield from length()
                elif opcode == _MODULE_FLOAT:
                    yield from skip(4)
                elif opcode == _MODULE_DOUBLE:
                    yield from skip(8)
                elif opcode == _MODULE_STRING:
                    yield from string()
                else:
                    raise Unreadable(f"unknown module value opcode {opcode}")

        def stream(kind: int) -> WAIT:
            for _ in range((yield from number())):  # listpacks: master ID, listpack
                yield from string()
                yield from string()
            for _ in range(3 if kind == 15 else 8):  # length, last ID (+ first ID, max deleted ID, entries added)
                yield from length()
            for _ in range((yield from number())):  # consumer groups
                yield from string()
                for _ in range(2 if kind == 15 else 3):  # last delivered ID (+ entries read)
                    yield from length()
                for _ in range((yield from number())):  # pending entries: raw ID, delivery time, count
                    yield from skip(16 + 8)
                    yield from length()
                for _ in range((yield from number())):  # consumers: name, seen (+ active) time, pending IDs
                    yield from string()
                    yield from skip(8 if kind < 21 else 16)
                    yield from skip(16 * (yield from number()))

        def value(kind: int) -> Generator[None, None, int]:
            """Step over a value of type `kind`; return ABSENT for an empty collection (not loaded), VOLATILE for a
            hash with field TTLs (gone once they pass), else PRESENT."""
            if kind in _PACKED:
                return ABSENT if (yield from packed(_PACKED[kind])) else PRESENT
            if kind in _STRINGS:
                count = yield from number()
                for _ in range(count * _STRINGS[kind]):
                    if not string_now():
                        yield from string_later()
                return PRESENT if count else ABSENT
            if kind in (3, 5):  # sorted set: member and score (a short decimal string, or 8 binary bytes)
                count = yield from number()
                for _ in range(count):
                    yield from string()
                    if kind == 5:
                        yield from skip(8)
                    else:
                        if len(buf) <= p:
                            yield from wait(1)
                        size = buf[p]
                        yield from skip(1 if size >= 253 else 1 + size)
                return PRESENT if count else ABSENT
            if kind in (14, 18):  # quicklist: nodes (in 2, each after its container kind); empty nodes are skipped
                present = ABSENT
                for _ in range((yield from number())):
                    container = 2 if kind == 14 else (yield from number())
                    if container == 1:  # a plain node: one element
                        yield from string()
                        present = PRESENT
                    elif not (yield from packed("ziplist" if kind == 14 else "listpack")):
                        present = PRESENT
                return present
            if kind in _STREAMS:
                yield from stream(kind)
                return PRESENT
            if kind == 7:  # module value: its module ID, then typed fields up to the module EOF
                yield from length()
                yield from module_value()
                return PRESENT
            if valkey:
                if kind != 22:
                    raise Unreadable(f"value type {kind} of a Valkey file is unknown to this worker")
                count = yield from number()  # Valkey 9's hash with field TTLs: per field its name, value, expiry
                for _ in range(count):
                    yield from string()
                    yield from string()
                    yield from skip(8)
                return VOLATILE if count else ABSENT
            if kind in (22, 24):  # Redis's hash with field TTLs: (minimum expiry,) per field its TTL, name, value
                if kind == 24:
                    yield from skip(8)
                count = yield from number()
                for _ in range(count):
                    yield from length()
                    yield from string()
                    yield from string()
                return VOLATILE if count else ABSENT
            if kind in (23, 25):  # listpack hash with field TTLs: (minimum expiry,) the listpack
                if kind == 25:
                    yield from skip(8)
                return ABSENT if (yield from packed("listpack")) else VOLATILE
            raise Unreadable(f"value type {kind} is unknown to this worker")

        yield from wait(HEADER_SIZE)
        valkey = bytes(buf[:6]) == b"VALKEY"  # Valkey 9 numbers its own types from 22 on
        digits = bytes(buf[:HEADER_SIZE]).lstrip(b"REDISVALKY")
        self._version = int(digits) if digits.isdigit() else None
        p = HEADER_SIZE
        db, has_ttl = "db0", False
        while True:
            if len(buf) <= p:
                yield from wait(1)
            opcode = buf[p]
            p += 1
            if opcode < SLOT_INFO:  # a key of this type: its name, then its value
                if not string_now():
                    yield from string_later()
                if opcode == 0:  # a string, the commonest record: no generator for it
                    if not string_now():
                        yield from string_later()
                    state = PRESENT
                else:
                    state = yield from value(opcode)
                if state != ABSENT:
                    keys[db] = keys.get(db, 0) + 1
                    if has_ttl:
                        expires[db] = expires.get(db, 0) + 1
                    elif state == VOLATILE:
                        volatile[db] = volatile.get(db, 0) + 1
                has_ttl = False
            elif opcode == EXPIRETIME_MS or opcode == EXPIRETIME:
                yield from skip(8 if opcode == EXPIRETIME_MS else 4)
                has_ttl = True
            elif opcode == SELECTDB:
                db = f"db{(yield from number())}"
            elif opcode == RESIZEDB:
                yield from length()
                yield from length()
            elif opcode == AUX:
                yield from string()
                yield from string()
            elif opcode == IDLE:
                yield from length()
            elif opcode == FREQ:
                yield from skip(1)
            elif opcode == SLOT_INFO:
                for _ in range(3):
                    yield from length()
            elif opcode == FUNCTION2:
                yield from string()
            elif opcode == MODULE_AUX:  # module ID, the "when" field (a UINT opcode and its value), the value
                for _ in range(3):
                    yield from length()
                yield from module_value()
            elif opcode == EOF:
                self._after_eof = len(buf) - p
                del buf[:]
                return
            else:
                raise Unreadable(f"opcode {opcode} is unknown to this worker")


# What a manifest's `rdb` records of the keys. One place reads it, for the drill and the empty-source guard.
MEASURED = {"counted_in": "file"}  # beside the counts: measured on the file by this walk


def recorded(manifest: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int], dict[str, int]] | None:
    """Return (keys, expires, hashes_with_field_ttls) per database as a manifest records them measured on its file;
    None when it records none so measured (the walk could not read the file, or the backup was made before the
    walk: its counts came from INFO before SYNC, not from the file, and are not compared). Raise ValueError when it
    records counts measured on the file that cannot be read (not maps of names to whole numbers): an altered or
    damaged manifest."""
    rdb = manifest.get("rdb")
    if not isinstance(rdb, dict) or rdb.get("counted_in") != MEASURED["counted_in"]:
        return None
    counts = [whole_numbers(rdb.get(name)) for name in ("keys", "expires", "hashes_with_field_ttls")]
    if None in counts:
        raise ValueError("its key counts are not maps of database names to whole numbers")
    keys, expires, volatile = counts
    return keys, expires, volatile


def held(manifest: Mapping[str, Any]) -> int | None:
    """Return how many keys a manifest says its backup holds, or None when it cannot tell: counts measured on the
    file; else, from a backup made before the walk, INFO's count when above zero (INFO said the server held keys;
    an empty `{}` there may be a user who could not run INFO)."""
    try:
        measured = recorded(manifest)
    except ValueError:
        return None
    if measured is not None:
        return sum(measured[0].values())
    rdb = manifest.get("rdb")
    legacy = whole_numbers(rdb.get("keys")) if isinstance(rdb, dict) and "uncounted" not in rdb else None
    return sum(legacy.values()) if legacy and sum(legacy.values()) > 0 else None
