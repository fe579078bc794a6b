"""Client-side encryption with age (age-encryption.org v1, issue 20): the one home of it.

The cryptography is pyrage's (the Rust `age` crate); nothing here is cryptography. This module parses
recipients (public keys: `age1…`, `ssh-ed25519 …`, `ssh-rsa …`) and identities (secret keys: `AGE-SECRET-KEY-1…`,
or an unencrypted SSH private key), and streams: `encrypting` turns writes of plaintext into an age stream in
`out`, `decrypting` turns an age stream into reads of plaintext, `opens` tells by a trial decryption of a file's
header whether identities open it. pyrage's `encrypt_io`/`decrypt_io` take a reader and a writer and run to the
end, so each stream runs them on a thread on one side of an `os.pipe`: memory stays at a few chunks whatever the
size, an error on the thread is raised in the caller, and the thread is always joined.

pyrage is imported on first use, so the worker runs without it while encryption is not configured.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
import hashlib
import io
import os
from pathlib import Path
import re
import threading
from types import ModuleType
from typing import BinaryIO

from jobs.errors import DecryptError

PACKAGE = "pyrage"
FORMAT = "age"
SUFFIX = ".age"  # <name>-<stamp>.<kind>.zst.age
RECIPIENTS_VARIABLE = "BACKUP_ENCRYPTION_RECIPIENTS"
IDENTITY_VARIABLE = "BACKUP_ENCRYPTION_IDENTITY"
IDENTITY_FILE_VARIABLE = "BACKUP_ENCRYPTION_IDENTITY_FILE"
IDENTITY_VARIABLES = (IDENTITY_VARIABLE, IDENTITY_FILE_VARIABLE)  # secrets: never in a child's environment
HEADER_LIMIT = 1 << 20  # `opens` reads at most this much: an age header and its first 64 KiB chunk are far less
IDENTITY_FILE_LIMIT = 1 << 16
_READ = 1 << 16
_SSH_TYPES = ("ssh-ed25519", "ssh-rsa")
_RECIPIENT_HINT = "use an age public key (age1… from `backup-worker keygen`) or an SSH public key (ssh-ed25519 AAAA… or ssh-rsa AAAA…)"


class BindingMissing(Exception):
    """pyrage cannot be imported; the message says what to install."""


def binding() -> ModuleType:
    """Return the pyrage module. Raise BindingMissing naming the package when it cannot be imported."""
    try:
        import pyrage
    except ImportError as error:
        raise BindingMissing(f"the age binding {PACKAGE} cannot be imported ({error}); install it with "
                             f"`pip install {PACKAGE}` (it is a dependency of backup-worker)") from None
    return pyrage


@dataclass(frozen=True)
class Recipient:
    """A public key to encrypt to: `text` its canonical form (`age1…` in lower case, or `ssh-… BASE64` without the
    comment), `key` pyrage's object."""

    text: str
    key: object = field(repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the SHA-256 of the recipient string: what a manifest records."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """A secret key to decrypt with, from `variable`; `recipient` is its public key (age identities only: an SSH
    identity cannot be turned into one), `secrets` the texts that must never reach a log."""

    kind: str  # "age" or "ssh"
    variable: str
    key: object = field(repr=False, compare=False)
    recipient: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def fingerprint(self) -> str | None:
        return Recipient(self.recipient, None).fingerprint if self.recipient else None


def _short(entry: str) -> str:
    return entry if len(entry) <= 16 else entry[:12] + "…"


def parse_recipients(text: str) -> list[Recipient]:
    """Given BACKUP_ENCRYPTION_RECIPIENTS (entries separated by commas or newlines, blank ones ignored), return
    its recipients, each once. Raise ValueError naming the bad entry (shortened; a secret key never shown)."""
    pyrage = binding()
    found: dict[str, Recipient] = {}
    entries = [entry.strip() for entry in re.split(r"[,\r\n]", text)]
    for number, entry in enumerate([entry for entry in entries if entry], start=1):
        where = f"entry {number}"
        if entry.upper().startswith(("AGE-SECRET-KEY-", "AGE-PLUGIN-")) or "PRIVATE KEY" in entry:
            raise ValueError(f"{where} is a secret key, not a recipient (not shown); put its public key here "
                             "(`age-keygen -y` prints it) and keep the secret key off this worker")
        words = entry.split()
        try:
            if entry.lower().startswith("age1") and len(words) == 1:
                canonical = entry.lower()
                key = pyrage.x25519.Recipient.from_str(canonical)
            elif words[0] in _SSH_TYPES and len(words) >= 2:
                canonical = f"{words[0]} {words[1]}"
                key = pyrage.ssh.Recipient.from_str(canonical)
            elif words[0].startswith(("ssh-", "ecdsa-", "sk-")):
                raise ValueError(f"{where} ({_short(entry)!r}) is a {words[0]} key, which age cannot encrypt to; "
                                 f"{_RECIPIENT_HINT}")
            else:
                raise ValueError(f"{where} ({_short(entry)!r}) is not a recipient; {_RECIPIENT_HINT}")
        except pyrage.RecipientError as error:
            raise ValueError(f"{where} ({_short(entry)!r}) is not a valid recipient ({error}); {_RECIPIENT_HINT}") from None
        found.setdefault(canonical, Recipient(canonical, key))
    if text.strip() and not found:
        raise ValueError(f"holds no recipient, only separators; {_RECIPIENT_HINT}, or unset it")
    return list(found.values())


def fingerprints(recipients: Sequence[Recipient]) -> list[str]:
    """Return each recipient's fingerprint, for the manifest's `"encryption": {"format": "age", "recipients": …}`."""
    return [recipient.fingerprint for recipient in recipients]


def manifest_field(recipients: Sequence[Recipient]) -> dict[str, object]:
    """Return the manifest's `encryption` field: the format and the recipients' fingerprints, never a secret."""
    return {"format": FORMAT, "recipients": fingerprints(recipients)}


def identity_secrets(text: str) -> list[str]:
    """Given an identity value or an identity file's content, return what log scrubbing must hide: the whole
    text and each of its lines that is not a comment (an SSH key's base64 lines included)."""
    lines = [line.strip() for line in text.splitlines()]
    return [text.strip(), *(line for line in lines if line and not line.startswith(("#", "-----")))]


def load_identities(value: str | None, file: Path | None) -> list[Identity]:
    """Given BACKUP_ENCRYPTION_IDENTITY's value and BACKUP_ENCRYPTION_IDENTITY_FILE's path (None when unset),
    return the identities, [] when neither is set. Raise ValueError naming the variable (never the secret) when
    both are set, the file cannot be read, or what they hold is not an age identity or an unencrypted
    ed25519/RSA SSH private key. BindingMissing when pyrage is missing."""
    if value and file:
        raise ValueError(f"{IDENTITY_VARIABLE} and {IDENTITY_FILE_VARIABLE} are both set; set only one of them")
    if value:
        return _parse_identities(value, IDENTITY_VARIABLE)
    if file is None:
        return []
    where = f"{IDENTITY_FILE_VARIABLE}={str(file)!r}"
    try:
        with open(file, "rb") as handle:
            data = handle.read(IDENTITY_FILE_LIMIT + 1)
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist; give the path of an age identity file (`backup-worker keygen > key.txt`)") from None
    except IsADirectoryError:
        raise ValueError(f"{where} is a directory; give the path of an age identity file") from None
    except OSError as error:
        raise ValueError(f"{where} cannot be read ({error.strerror or error}); make it readable by this user") from None
    if len(data) > IDENTITY_FILE_LIMIT:
        raise ValueError(f"{where} is larger than {IDENTITY_FILE_LIMIT // 1024} KiB: not an identity file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not text: not an age identity file or an SSH private key") from None
    return _parse_identities(text, where)


def _parse_identities(text: str, where: str) -> list[Identity]:
    pyrage = binding()
    variable = where.partition("=")[0]
    secrets = tuple(identity_secrets(text))
    if "-----BEGIN" in text:
        try:
            key = pyrage.ssh.Identity.from_buffer(text.strip().encode() + b"\n")
        except pyrage.IdentityError as error:
            reason = ("it is protected by a passphrase; age needs it unencrypted (`ssh-keygen -p -N '' -f FILE` "
                      "on a copy kept as safe as the key)") if "decrypted" in str(error) else f"{error}"
            raise ValueError(f"{where} holds an SSH private key that cannot be used: {reason}; ed25519 and RSA "
                             "keys work") from None
        return [Identity("ssh", variable, key, None, secrets)]
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.upper().startswith("AGE-SECRET-KEY-1"):
            kind = "an age plugin identity, which is not supported" if line.upper().startswith("AGE-PLUGIN-") \
                else "not an age identity (AGE-SECRET-KEY-1…)"
            raise ValueError(f"{where}: line {number} is {kind} (not shown); `backup-worker keygen` prints one")
        try:
            key = pyrage.x25519.Identity.from_str(line.upper())
        except pyrage.IdentityError:
            raise ValueError(f"{where}: line {number} is not a valid age identity (not shown; it looks damaged or "
                             "cut short); copy it again whole") from None
        found.append(Identity("age", variable, key, str(key.to_public()), secrets))
    if not found:
        raise ValueError(f"{where} holds no identity; `backup-worker keygen` prints one (AGE-SECRET-KEY-1…)")
    return found


def new_identity() -> tuple[str, str]:
    """Return a new age identity (AGE-SECRET-KEY-1…) and its recipient (age1…)."""
    key = binding().x25519.Identity.generate()
    return str(key), str(key.to_public())


class _Pipe(io.RawIOBase):
    """The reading end of an os.pipe as a raw stream. `fail()` makes its end of file an error (`failure()`
    returns the exception to raise, or None for a clean end); closing it makes the writer's next write fail."""

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
    if failures:
        raise sink.error or failures[0]


def _decrypt_error(error: BaseException, identities: Sequence[Identity], what: str) -> BaseException:
    text = str(error)
    if "No matching keys" in text:
        variable = identities[0].variable if identities else IDENTITY_VARIABLE
        return DecryptError(f"none of the identities in {variable} opens {what}: it was encrypted to other "
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
    thread: threading.Thread | None = None
    failures: list[BaseException] = []

    def decrypt() -> None:
        with os.fdopen(write_fd, "wb", buffering=_READ) as writer:
            pyrage.decrypt_io(origin, writer, keys)

    def failure() -> BaseException | None:
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
