"""age streams (issue 20): `encrypting` turns writes of plaintext into an age stream, `decrypting` an age stream
into reads of plaintext, `opens` tells by a trial decryption of a file's header whether identities open it.

pyrage's `encrypt_io`/`decrypt_io` take a reader and a writer and run to the end, so each stream runs them on a
thread on one side of an `os.pipe`: memory stays at a few 64 KiB chunks whatever the size, an error on the thread
is raised in the caller, and the thread is always joined.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
import io
import os
import threading
from typing import BinaryIO

from jobs.encryption.keys import IDENTITY_VARIABLE, Identity, Recipient, binding
from jobs.errors import DecryptError, WrongIdentity

HEADER_LIMIT = 1 << 20  # `opens` reads at most this much: an age header and its first 64 KiB chunk are far less
_READ = 1 << 16


class _Pipe(io.RawIOBase):
    """The reading end of an os.pipe as a raw stream. At its end of file it raises what `failure()` returns
    (None: a clean end); closing it makes the writer's next write fail."""

    def __init__(self, fd: int, failure=lambda: None) -> None:
        self.fd, self.failure = fd, failure

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = os.read(self.fd, len(buffer))
        if not data and (error := self.failure()) is not None:
            raise error
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


class _Watched:
    """A reader or writer handed to pyrage that keeps its own error (a failed download, a full disk), so that the
    caller gets that error and not pyrage's wrapping of it; `count` is the bytes it passed."""

    def __init__(self, stream: BinaryIO, limit: int | None = None) -> None:
        self.stream, self.limit, self.count, self.error = stream, limit, 0, None

    def read(self, size: int = -1) -> bytes:
        if self.limit is not None:
            size = min(size if size >= 0 else _READ, self.limit - self.count)
        try:
            data = self.stream.read(size) if size else b""
        except BaseException as error:
            self.error = error
            raise
        self.count += len(data)
        return data

    def write(self, data: bytes) -> int:
        try:
            self.stream.write(data)
        except BaseException as error:
            self.error = error
            raise
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self.stream.flush()


def _run(target, name: str) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def work() -> None:
        try:
            target()
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread, failures


@contextmanager
def encrypting(out: BinaryIO, recipients: Sequence[Recipient]) -> Iterator[BinaryIO]:
    """Yield a writable stream whose plaintext is encrypted to `recipients` into `out`. The age stream is
    finished when the block ends; if the block raises, it is left unfinished (no valid file of half the data).
    An error of `out` or of the encryption is raised here; the thread is always joined."""
    pyrage = binding()
    if not recipients:
        raise ValueError("encrypting needs at least one recipient")
    keys = [recipient.key for recipient in recipients]
    read_fd, write_fd = os.pipe()
    abandoned = threading.Event()
    source = _Pipe(read_fd, lambda: OSError("the plaintext stream was abandoned") if abandoned.is_set() else None)
    sink = _Watched(out)

    def encrypt() -> None:
        with source:  # closed at the end: a writer blocked on a full pipe then fails instead of waiting forever
            pyrage.encrypt_io(source, sink, keys)

    thread, failures = _run(encrypt, "age-encrypt")
    writer = os.fdopen(write_fd, "wb", buffering=_READ)
    try:
        yield writer
        writer.close()  # end of plaintext: the thread writes the last chunk
    except BaseException as error:
        abandoned.set()
        try:
            writer.close()
        except OSError:
            pass
        thread.join()
        if failures and isinstance(error, BrokenPipeError):  # the thread stopped reading: its error is the cause
            raise sink.error or failures[0] from None
        raise
    thread.join()
    if failures or sink.error is not None:  # pyrage may swallow an error of its last small write: ours saw it
        raise sink.error or failures[0]


def _decrypt_error(error: BaseException, identities: Sequence[Identity], what: str) -> BaseException:
    text = str(error)
    if "No matching keys" in text:
        variable = identities[0].variable if identities else IDENTITY_VARIABLE
        return WrongIdentity(f"none of the identities in {variable} opens {what}: it was encrypted to other "
                            f"recipients; set {variable} to the identity of one of them")
    if "Header is invalid" in text or "Incomplete header" in text:
        return DecryptError(f"{what} is not an age file or is cut short in its header ({text})")
    return DecryptError(f"{what} cannot be decrypted: its age stream is damaged, altered or cut short ({text}); "
                        "use another copy or an older backup")


@contextmanager
def decrypting(source: BinaryIO, identities: Sequence[Identity], what: str = "the file") -> Iterator[BinaryIO]:
    """Yield a readable stream of the plaintext of the age stream `source`. A wrong identity, or a damaged or
    altered stream, raises DecryptError from a read (never a clean end of file before the whole stream is
    authenticated); an error of `source` itself is raised as it is. Leaving the block early stops the thread."""
    pyrage = binding()
    keys = [identity.key for identity in identities]
    read_fd, write_fd = os.pipe()
    origin = _Watched(source)

    def decrypt() -> None:
        with os.fdopen(write_fd, "wb", buffering=_READ) as writer:
            pyrage.decrypt_io(origin, writer, keys)

    def failure() -> BaseException | None:  # at the end of the plaintext: was it the end of the stream?
        thread.join()
        if failures:
            return origin.error or _decrypt_error(failures[0], identities, what)
        return None

    plain = _Pipe(read_fd, failure)
    thread, failures = _run(decrypt, "age-decrypt")
    reader = io.BufferedReader(plain, _READ)
    try:
        yield reader
    finally:
        reader.close()  # a thread still writing gets a broken pipe and ends
        thread.join()


class _Opened(Exception):
    """The first plaintext chunk arrived: the header opened and the chunk authenticated."""


class _FirstChunk:
    def write(self, data: bytes) -> int:
        raise _Opened()

    def flush(self) -> None:
        pass


def opens(header_source: BinaryIO, identities: Sequence[Identity], what: str = "the file") -> bool:
    """Return whether `identities` open the age file `header_source`, reading at most its header and first chunk
    (a wrong identity fails at the header). Raise DecryptError when it is no age file or is damaged there."""
    pyrage = binding()
    origin = _Watched(header_source, limit=HEADER_LIMIT)
    try:
        pyrage.decrypt_io(origin, _FirstChunk(), [identity.key for identity in identities])
    except _Opened:
        return True
    except Exception as error:
        if origin.error is not None:
            raise origin.error from None
        if "No matching keys" in str(error):
            return False
        raise _decrypt_error(error, identities, what) from None
    return True  # an empty payload, wholly read
