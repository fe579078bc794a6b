"""Compression: an artifact is one standard zstd frame with a content checksum, so `zstd -d` restores it without
our code. Compressing and decompressing stream in chunks, hash what they write and stop when asked to."""

from collections.abc import Callable
from dataclasses import dataclass
import hashlib
from pathlib import Path
import threading
from typing import BinaryIO

import zstandard

from jobs.errors import Cancelled, IntegrityError, SourceError

CHUNK = 1 << 20
# Multithreaded zstd works in jobs; libzstd finishes running jobs before it lets go, so their size bounds how
# fast a cancelled compression stops (~1 s at level 19 with 2 MiB, instant at level 3) at no cost in ratio.
JOB_SIZE = 2 << 20


class HashingWriter:
    """A write-only file that hashes what passes through and stops when `cancel` is set."""

    def __init__(self, target: BinaryIO, cancel: threading.Event) -> None:
        self.target = target
        self.cancel = cancel
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.cancel.is_set():
            raise Cancelled("the worker is stopping; compression was interrupted")
        self.digest.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


@dataclass(frozen=True)
class Compressed:
    size: int
    sha256: str
    raw_size: int


def compress_stream(stream: BinaryIO, out: BinaryIO, level: int, cancel: threading.Event, size: int | None = None,
                    feed: Callable[[bytes], None] | None = None) -> Compressed:
    """Read `stream` in chunks until b"", hand each chunk to `feed` (the engine's check) and to zstd (one frame,
    checksum, content size when `size` is known, multithreaded), and write the frame to `out`, hashing it.

    Raise SourceError if the stream is not `size` bytes long, Cancelled if `cancel` is set."""
    compressor = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        level, threads=-1, job_size=JOB_SIZE, write_checksum=True, write_content_size=size is not None))
    writer = HashingWriter(out, cancel)
    raw_size = 0
    # Not a `with` block: on an error its exit would still end the frame, and libzstd's complaint about the
    # missing bytes would replace the error that stopped us.
    zst = compressor.stream_writer(writer, size=-1 if size is None else size, write_size=CHUNK, closefd=False)
    while True:
        if cancel.is_set():
            raise Cancelled("the worker is stopping; compression was interrupted")
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        raw_size += len(chunk)
        if size is not None and raw_size > size:
            raise SourceError(f"the snapshot grew while it was read ({size} bytes expected)")
        if feed is not None:
            feed(chunk)
        zst.write(chunk)
    if size is not None and raw_size != size:
        raise SourceError(f"the snapshot ended after {raw_size} of its {size} bytes")
    zst.close()  # ends the frame (checksum); `closefd=False` leaves `out` open
    out.flush()
    return Compressed(size=writer.size, sha256=writer.digest.hexdigest(), raw_size=raw_size)


def sha256_file(path: Path, cancel: threading.Event | None = None) -> str:
    """Return the hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if cancel is not None and cancel.is_set():
                raise Cancelled("the worker is stopping; hashing was interrupted")
            digest.update(chunk)
    return digest.hexdigest()


def decompress_stream(source: BinaryIO, feed: Callable[[bytes], None], cancel: threading.Event, name: str) -> int:
    """Decompress the zstd stream `source` chunk by chunk into `feed`, checking every frame checksum, as
    `zstd -d` would; return the raw size. Raise IntegrityError naming `name` if it does not decompress."""
    raw_size = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=CHUNK, read_across_frames=True,
                                                            closefd=False)
        while chunk := reader.read(CHUNK):
            if cancel.is_set():
                raise Cancelled("the worker is stopping; decompression was interrupted")
            raw_size += len(chunk)
            feed(chunk)
    except zstandard.ZstdError as error:
        raise IntegrityError(f"{name} does not decompress: {error}") from None
    return raw_size


def decompress(artifact: Path, out: BinaryIO, cancel: threading.Event) -> int:
    """Stream-decompress `artifact` into `out`, checking the frame checksum. Raise IntegrityError if damaged."""
    with artifact.open("rb") as source:
        size = decompress_stream(source, out.write, cancel, artifact.name)
    out.flush()
    return size
