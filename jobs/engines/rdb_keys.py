"""The keys an RDB file holds, counted per database as its bytes stream past (and those with a TTL).

The walk reads the file's structure only: opcodes, lengths, and the length of every string, whose bytes it skips
without keeping them (a value of any size costs the walk a few bytes of memory). A key is one record: its
EXPIRETIME (then it has a TTL), IDLE or FREQ opcodes, then its type, its name and its value. The formats are those
of Redis's `rdb.c` (value types 0-25, opcodes 244-255) and Valkey's (the same up to type 21).

These are the counts a drill compares a restored copy with, so they are measured on the file, never taken from
the server (whose keyspace moves on while it forks). A file the walk cannot read to its end (a value type newer than
this worker, a module value in the 4.0 pre-release form, an RDB older than version 5 whose end the walk cannot tell)
has no counts: `finish()` returns None and `problem` says why. The backup is still proven by its CRC64; only the
drill's comparison of keys is lost for it.
"""

from collections.abc import Generator

WAIT = Generator[None, None, None]
HEADER_SIZE = 9
TRAILER_SIZE = 8
FIRST_CHECKSUMMED_VERSION = 5

# Opcodes (Redis src/rdb.h).
SLOT_INFO, FUNCTION2, FUNCTION_PRE_GA, MODULE_AUX, IDLE, FREQ, AUX, RESIZEDB, EXPIRETIME_MS, EXPIRETIME, SELECTDB, EOF = range(244, 256)
# Value types made of one string (a ziplist, listpack, intset or zipmap blob, or a plain string).
_ONE_STRING = frozenset({0, 9, 10, 11, 12, 13, 16, 17, 20, 23})
_STRINGS = {1: 1, 2: 1, 4: 2, 14: 1}  # type: strings per element after the element count (list, set, hash, quicklist)
_STREAMS = (15, 19, 21)
_MODULE_EOF, _MODULE_SINT, _MODULE_UINT, _MODULE_FLOAT, _MODULE_DOUBLE, _MODULE_STRING = range(6)


class Unreadable(Exception):
    """The file holds something this walk does not know how to step over."""


class KeyCounter:
    """Counts the keys of an RDB stream fed in order, per database (`db0`, `db1`, … as INFO keyspace names them)."""

    def __init__(self) -> None:
        self.keys: dict[str, int] = {}
        self.expires: dict[str, int] = {}
        self.problem: str | None = None
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
            self._give_up(str(error))
        except Exception as error:  # noqa: BLE001 - a walk that trips must never fail the backup it counts
            self._give_up(f"the walk failed ({type(error).__name__}: {error})")

    def _give_up(self, why: str) -> None:
        self.problem = f"the RDB's keys were not counted: {why}"
        self._buf = bytearray()
        self._walk.close()

    def finish(self) -> dict[str, dict[str, int]] | None:
        """End of stream: return {"keys": {db: n}, "expires": {db: n}}, or None (with `problem` set) when the walk
        did not end at the file's EOF opcode followed by exactly its checksum."""
        if self.problem is not None:
            return None
        if self._after_eof is None:
            self._give_up(f"the stream ended ({self._fed} bytes) before the EOF opcode")
            return None
        trailer = TRAILER_SIZE if (self._version or 0) >= FIRST_CHECKSUMMED_VERSION else 0
        if self._after_eof != trailer:
            self._give_up(f"the EOF opcode was followed by {self._after_eof} bytes, not the {trailer} of a checksum")
            return None
        return {"keys": dict(self.keys), "expires": {db: self.expires.get(db, 0) for db in self.keys}}

    def _records(self) -> Generator[None, None, None]:
        """The walk: a generator resumed by feed() after each chunk; it waits (yields) only when the bytes it needs
        are not buffered yet, so most records are read without leaving it."""
        buf = self._buf
        p = 0
        keys, expires = self.keys, self.expires

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
            size = {0x80: 4, 0x81: 8}.get(first)
            if size is None:
                raise Unreadable(f"unknown length encoding {first:#04x}")
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

        def string() -> WAIT:
            if string_now():
                return
            value, encoded = yield from length()
            if not encoded:
                yield from skip(value)
            elif value in (0, 1, 2):
                yield from skip(1 << value)
            elif value == 3:  # LZF: compressed length, original length, the compressed bytes
                compressed, _ = yield from length()
                yield from length()
                yield from skip(compressed)
            else:
                raise Unreadable(f"unknown string encoding {value}")

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

        def value(kind: int) -> WAIT:
            if kind in _ONE_STRING:
                yield from string()
            elif kind in _STRINGS:
                for _ in range((yield from number()) * _STRINGS[kind]):
                    yield from string()
            elif kind == 18:  # quicklist 2: per node its container kind, then the node
                for _ in range((yield from number())):
                    yield from length()
                    yield from string()
            elif kind in (3, 5):  # sorted set: member and score (a short decimal string, or 8 binary bytes)
                for _ in range((yield from number())):
                    yield from string()
                    if kind == 5:
                        yield from skip(8)
                    else:
                        if len(buf) <= p:
                            yield from wait(1)
                        size = buf[p]
                        yield from skip(1 if size >= 253 else 1 + size)
            elif kind in (22, 24):  # hash with field TTLs: (minimum expiry,) then per field its TTL, name, value
                if kind == 24:
                    yield from skip(8)
                for _ in range((yield from number())):
                    yield from length()
                    yield from string()
                    yield from string()
            elif kind == 25:  # listpack hash with field TTLs: minimum expiry, the listpack
                yield from skip(8)
                yield from string()
            elif kind in _STREAMS:
                yield from stream(kind)
            elif kind == 7:  # module value: its module ID, then typed fields up to the module EOF
                yield from length()
                yield from module_value()
            else:
                raise Unreadable(f"value type {kind} is unknown to this worker")

        yield from wait(HEADER_SIZE)
        digits = bytes(buf[:HEADER_SIZE]).lstrip(b"REDISVALKY")
        self._version = int(digits) if digits.isdigit() else None
        p = HEADER_SIZE
        db, has_ttl = "db0", False
        while True:
            if len(buf) <= p:
                yield from wait(1)
            opcode = buf[p]
            p += 1
            if opcode < SLOT_INFO:  # a key of this type
                if not string_now():
                    yield from string()  # its name
                yield from value(opcode)
                keys[db] = keys.get(db, 0) + 1
                if has_ttl:
                    expires[db] = expires.get(db, 0) + 1
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
