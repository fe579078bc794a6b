"""Artifact naming, the one place that knows how our files are named: artifacts, their manifests, backup ids,
backup set names, and the temporary names files are written under.

An artifact is `<set>-<YYYYMMDDTHHMMSSZ>.<kind>.zst`; its manifest is the same name plus `.json`; a backup's id is
the artifact name minus `.zst` (version 1 wrote it minus `.<kind>.zst`). A file is written under
`.tmp-<pid>-<token>-<final name>` until it is complete (see `jobs.files`), a backup's scratch directory is
`.tmp-<pid>-<token>-snapshot.<set>.<random>`. Nothing here touches a file except the liveness test of a
temporary's writer.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
import functools
import os
from pathlib import Path
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
import errno
import hashlib
import json
import shutil
import threading
from typing import Any, BinaryIO

import structlog
import zstandard

from jobs.errors import Cancelled, IntegrityError, SourceError, SpaceError

CHUNK = 1 << 20
JOB_SIZE = 2 << 20
FILE_MODE = 0o600
DIR_MODE = 0o700
MANIFEST_VERSION = 1

ARTIFACT_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)-(?P<stamp>\d{8}T\d{6}Z)\.(?P<kind>[a-z]+)\.zst$")
STAMP = "%Y%m%dT%H%M%SZ"
SET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")  # the `<name>` of artifact names, as configured
MANIFEST_SUFFIX = ".json"
TEMP_PREFIX = ".tmp-"
SNAPSHOT_DIR = "snapshot."  # a backup's scratch directory: `.tmp-<pid>-<token>-snapshot.<set>.<random>`
# A backup id as a person writes it: the id, the version 1 id, or the artifact or manifest file name.
_ID = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)-(?P<stamp>\d{8}T\d{6}Z)(?:\.(?P<kind>[a-z]+))?(?:\.zst)?(?:\.json)?$")
_TEMP_NAME = re.compile(r"^\.tmp-(?P<pid>\d+)-(?:(?P<token>[0-9a-f]{8})-)?")


@dataclass(frozen=True, order=True)
class BackupSet:
    """The backups of one source: the `<name>` and `<kind>` of their artifact names."""

    name: str
    kind: str

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def owns(self, artifact: str) -> bool:
        """Return whether `artifact` is an artifact name of this set."""
        return set_of(artifact) == self


@dataclass(frozen=True)
class ArtifactName:
    """An artifact name taken apart: its backup set (name and kind) and the UTC time in its stamp."""

    backup_set: BackupSet
    created_at: datetime


def parse(artifact: str) -> ArtifactName | None:
    """Return the parts of an artifact name, or None if it is not named as we name artifacts: the stamp must be a
    real UTC time (`app-20261399T999999Z.sqlite.zst` is nobody's backup, and is never read or touched)."""
    match = ARTIFACT_NAME.match(artifact)
    if not match:
        return None
    try:
        moment = datetime.strptime(match["stamp"], STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return ArtifactName(BackupSet(match["name"], match["kind"]), moment)


def set_of(artifact: str) -> BackupSet | None:
    """Return the backup set of an artifact name, or None if it is not one (see `parse`)."""
    parts = parse(artifact)
    return parts.backup_set if parts else None


def artifact_name(name: str, kind: str, created_at: datetime) -> str:
    """Return `<name>-<YYYYMMDDTHHMMSSZ>.<kind>.zst` for a backup taken at `created_at` (any time zone)."""
    return f"{name}-{created_at.astimezone(timezone.utc).strftime(STAMP)}.{kind}.zst"


def manifest_name(artifact: str) -> str:
    """Return the name of an artifact's manifest: `<artifact>.json`."""
    return artifact + MANIFEST_SUFFIX


def backup_id(artifact: str) -> str:
    """Return the backup id of an artifact name: the name without `.zst` (`app-20261122T020000Z.sqlite`), so
    that the id names the backup set's kind too. Version 1 wrote the name without `.<kind>.zst` (`legacy_id`)."""
    if not ARTIFACT_NAME.match(artifact):
        raise ValueError(f"{artifact!r} is not an artifact name")
    return artifact.removesuffix(".zst")


def legacy_id(artifact: str) -> str:
    """Return the id version 1 wrote for `artifact`: its name minus `.<kind>.zst`."""
    match = ARTIFACT_NAME.match(artifact)
    if not match:
        raise ValueError(f"{artifact!r} is not an artifact name")
    return f"{match['name']}-{match['stamp']}"


def parse_id(text: str) -> tuple[str, str | None] | None:
    """Given a backup named as a person may name it (id, version 1 id, artifact or manifest file name), return its
    set name and its kind (None when the name does not say it), or None if it is not such a name."""
    match = _ID.match(text)
    return (match["name"], match["kind"]) if match else None


def set_name(text: str, fallback: str) -> str:
    """Return the backup set name a source's own name gives (a file stem, a database name): every run of other
    characters than letters, digits, `_` and `-` becomes one `-`; `fallback` when nothing is left."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or fallback


def is_set_name(text: str) -> bool:
    """Return whether `text` may name a backup set: letters, digits, `_` and `-`, at most 100."""
    return bool(SET_NAME.match(text))


def temp_path(final: Path) -> Path:
    """Return the temporary name `final` is written under until it is complete: `.tmp-<pid>-<token>-<name>`."""
    return final.with_name(temp_prefix() + final.name)


@functools.cache
def _process_token() -> str:
    return secrets.token_hex(4)


def temp_prefix() -> str:
    """Return the prefix of this process's temporary names: `.tmp-<pid>-<token>-`.

    The pid tells whether the writer still runs; the random token tells a restarted worker from its predecessor
    when both had the same pid (pid 1 in a container), so the predecessor's leftovers still count as stale.
    """
    return f"{TEMP_PREFIX}{os.getpid()}-{_process_token()}-"


def temporary_of(name: str) -> str | None:
    """Return the final name a temporary name `.tmp-<pid>-<token>-<final>` stands for, or None if it is not one."""
    match = _TEMP_NAME.match(name)
    return name[match.end():] if match else None


def temporary_manifest_of(name: str) -> str | None:
    """Return the artifact name whose manifest the temporary name `name` stands for, or None if it is none."""
    final = temporary_of(name)
    if final is None or not final.endswith(".zst" + MANIFEST_SUFFIX) or len(final) == len(".zst" + MANIFEST_SUFFIX):
        return None
    return final.removesuffix(MANIFEST_SUFFIX)


def snapshot_dir_prefix(set_name: str) -> str:
    """Return the name prefix of the scratch directory a backup of the set `set_name` snapshots into."""
    return f"{temp_prefix()}{SNAPSHOT_DIR}{set_name}."


def set_of_temporary(name: str) -> str | None:
    """Return the backup set a temporary name belongs to (an artifact's, a manifest's or a snapshot's scratch
    directory of that set), or None if it is not a temporary or not one set's (a probe, a restore's scratch)."""
    final = temporary_of(name)
    if final is None:
        return None
    if final.startswith(SNAPSHOT_DIR):
        owner, dot, _ = final[len(SNAPSHOT_DIR):].rpartition(".")
        return owner if dot and owner else None
    match = ARTIFACT_NAME.match(final.removesuffix(MANIFEST_SUFFIX))
    return match["name"] if match else None


def is_stale_temporary(name: str) -> bool:
    """Return whether `name` is one of our temporary names whose writer is gone."""
    match = _TEMP_NAME.match(name)
    if not match:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return match["token"] != _process_token()
    return not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Return whether a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

# --- Not naming: files, compression and manifests (moved out in the next step) ---


def utc_iso(moment: datetime) -> str:
    """Return an ISO 8601 UTC timestamp with a Z, to the second."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp into an aware datetime. Raise ValueError if it is not one."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def ensure_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 if missing. The mode of an existing directory is never changed
    (it may be the app's own data directory); one that others can read or write is logged as a warning, once."""
    try:
        path.mkdir(parents=True, mode=DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path)) from None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077 and path not in _warned_modes:
            _warned_modes.add(path)
            structlog.get_logger("jobs.artifacts").warning(
                "backup_dir.open_mode", path=str(path), mode=oct(mode),
                hint=f"users other than this one have access to the backups; run chmod 700 {path} unless the app needs that")
        return
    path.chmod(DIR_MODE)  # ours: exactly 0700 whatever the umask


_warned_modes: set[Path] = set()


def require_space(directory: Path, needed: int, purpose: str, hint: str) -> None:
    """Raise SpaceError, naming both numbers, if the volume holding `directory` has less than `needed` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise SpaceError(f"{directory} has {free >> 20} MiB free but {purpose} needs about {needed >> 20} MiB; {hint}")


def remove_temporary(path: Path) -> None:
    """Remove a stale temporary file or directory of ours. A symlink is removed itself, never what it points at."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path) -> BinaryIO:
    """Create a new file with mode 0600 (failing if it exists) and return it open for binary writing."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    return os.fdopen(fd, "wb")


def publish(temp: Path, final: Path) -> None:
    """Fsync `temp`, rename it to `final` and fsync the directory: after this `final` is whole or absent."""
    fsync_path(temp)
    os.replace(temp, final)
    fsync_path(final.parent)


@contextmanager
def atomic_file(final: Path) -> Iterator[BinaryIO]:
    """Yield a 0600 file written under a temporary name; rename it to `final` only if the block succeeds."""
    temp = temp_path(final)
    try:
        with create_private(temp) as handle:
            yield handle
        publish(temp, final)
    finally:
        temp.unlink(missing_ok=True)


class _HashingWriter:
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
    writer = _HashingWriter(out, cancel)
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


def compress(raw: Path, out: BinaryIO, level: int, cancel: threading.Event) -> Compressed:
    """Stream the file `raw` through zstd (one frame, content size and checksum) into `out`, hashing the output."""
    with raw.open("rb") as source:
        return compress_stream(source, out, level, cancel, size=os.fstat(source.fileno()).st_size)


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


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write a manifest atomically (0600)."""
    with atomic_file(path) as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")


def read_manifest(data: bytes, artifact: str) -> dict[str, Any]:
    """Parse and check a manifest's bytes for `artifact`. Raise ValueError if it is not one of ours."""
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise ValueError("not a JSON object")
    expected = {"id": str, "created_at": str, "sha256": str, "size": int, "format": dict, "source": dict}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"]):
        raise ValueError("'sha256' is not 64 hex digits")
    if manifest.get("artifact", artifact) != artifact:
        raise ValueError(f"describes {manifest.get('artifact')!r}, not {artifact!r}")
    raw_size = manifest.get("raw_size")
    if raw_size is not None and not isinstance(raw_size, int):
        raise ValueError("'raw_size' is not a whole number")
    parse_iso(manifest["created_at"])
    return manifest
