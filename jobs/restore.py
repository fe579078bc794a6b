"""Re-proving and restoring backups: size and SHA-256, then one decompression fed to the engine's check, then
the restore.

The artifact's size and SHA-256 are checked against its manifest BEFORE any byte reaches an engine, so a damaged
or substituted artifact never gets near a restore target. The artifact is then decompressed once (every frame
checksum checked) and the raw chunks go to the engine's `checker`; only a proven raw file is renamed into place
or written into a live database. Scratch files live in a private temporary directory, named by us, never by
anything read from a manifest.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
import errno
import hashlib
import os
from pathlib import Path
import shutil
import stat
import tempfile
import threading
from typing import BinaryIO

from jobs import artifacts, compression, encryption, engines, files, selection
from jobs.backups import Backup
from jobs.engines._sqlite_files import sidecars
from jobs.engines import Source
from jobs.errors import Cancelled, IntegrityError, NoIdentity, SourceError, SpaceError, StorageError

HEADROOM = 16 << 20
RAW_NAME = "raw"  # the raw file written beside a check that keeps no file of its own


def _check_file(handle: BinaryIO, backup: Backup, cancel: threading.Event) -> None:
    """Check an open artifact's size and SHA-256 against the manifest. Raise IntegrityError naming which failed."""
    size = os.fstat(handle.fileno()).st_size
    if size != backup.size:
        raise IntegrityError(f"{backup.artifact} is {size} bytes but its manifest says {backup.size}; the file is damaged or incomplete")
    digest = hashlib.sha256()
    while chunk := handle.read(compression.CHUNK):
        if cancel.is_set():
            raise Cancelled("the worker is stopping; hashing was interrupted")
        digest.update(chunk)
    if digest.hexdigest() != backup.sha256:
        raise IntegrityError(f"{backup.artifact} does not match the SHA-256 in its manifest; the file is damaged: "
                             "use another backup (by its id, or --fallback for the newest intact one)")


def prove_file(artifact: Path, backup: Backup, cancel: threading.Event) -> Path:
    """Check the artifact file's size and SHA-256 against the manifest; return its path. Raise IntegrityError
    naming what failed (a missing file too)."""
    try:
        with artifact.open("rb") as handle:
            _check_file(handle, backup, cancel)
    except FileNotFoundError:
        raise IntegrityError(f"{backup.artifact} is missing; its manifest is there but the artifact is not") from None
    return artifact


def no_identity(backup: Backup) -> str:
    """Return the sentence for an encrypted backup that no configured identity can open."""
    return (f"{backup.artifact} is encrypted (age) and no identity is configured to open it: set "
            f"{encryption.IDENTITY_VARIABLE} or {encryption.IDENTITY_FILE_VARIABLE} to the identity whose recipient "
            "encrypted it (see docs/encryption.md)")


@contextmanager
def _proving(artifact: Path, backup: Backup, workdir: Path, cancel: threading.Event, keep_raw: bool,
             identities: Sequence[encryption.Identity] = ()) -> Iterator[tuple[Path | None, list[str]]]:
    """Prove the artifact in `workdir` (a private scratch directory); yield the proven raw file (if `keep_raw`)
    and the checks that passed. An encrypted artifact is decrypted with `identities` on the way (Raise
    NoIdentity when there are none, DecryptError when none opens it or its ciphertext was tampered with)."""
    try:
        handle = artifact.open("rb")
    except FileNotFoundError:
        raise IntegrityError(f"{backup.artifact} is missing; its manifest is there but the artifact is not") from None
    with handle, ExitStack() as stack:
        _check_file(handle, backup, cancel)
        handle.seek(0)
        stream: BinaryIO = handle
        checks = ["size", "sha256"]
        if selection.is_encrypted(backup):
            if not identities:
                raise NoIdentity(no_identity(backup))
            stream = stack.enter_context(encryption.decrypting(handle, identities, backup.artifact))
            checks.append("age authentication")
        with engines.checker(backup.kind, workdir, cancel) as check:
            raw_out = None
            try:
                if keep_raw and check.path is None:  # the check keeps no file: keep one beside it
                    raw_out = files.create_private(workdir / RAW_NAME)
                raw_size = compression.decompress_stream(stream, _tee(check.feed, raw_out), cancel, backup.artifact)
                expected = backup.manifest.get("raw_size")
                if isinstance(expected, int) and raw_size != expected:
                    raise IntegrityError(f"{backup.artifact} decompresses to {raw_size} bytes, not the {expected} its manifest says")
                if raw_out is not None:
                    raw_out.flush()
                    os.fsync(raw_out.fileno())
                    raw_out.close()
                passed = check.finish()
            except OSError as error:
                raise StorageError(f"cannot write to {workdir}: {error.strerror or error}; check free space", stage="verify") from None
            finally:
                if raw_out is not None:
                    raw_out.close()
                check.close()
            raw = check.path or (workdir / RAW_NAME if raw_out is not None else None)
            yield (raw if keep_raw else None), [*checks, "zstd frame checksum", passed]


def _tee(feed: Callable[[bytes], None], out: BinaryIO | None) -> Callable[[bytes], None]:
    """Return `feed`, or a function that feeds each chunk and also writes it to `out`."""
    if out is None:
        return feed

    def both(chunk: bytes) -> None:
        feed(chunk)
        out.write(chunk)

    return both


def sweep_stale(directory: Path, marker: str) -> list[str]:
    """Remove our temporaries in `directory` whose name holds `marker` and whose writer is gone (a killed restore
    left them); return their names. Nothing else there is touched."""
    removed = []
    for child in directory.iterdir():
        if marker in child.name and artifacts.is_stale_temporary(child.name) and not child.is_symlink():
            files.remove_temporary(child)
            removed.append(child.name)
    return removed


@contextmanager
def _scratch(directory: Path, purpose: str) -> Iterator[Path]:
    """Yield a new private (0700) directory in `directory` with a temporary name; remove it afterwards. Those a
    killed run left there are removed first."""
    sweep_stale(directory, f"-{purpose}-")
    try:
        path = Path(tempfile.mkdtemp(prefix=artifacts.temp_prefix() + purpose + "-", dir=directory))
    except OSError as error:
        raise StorageError(f"cannot create a scratch directory in {directory}: {error.strerror or error}", stage="verify") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_artifact(artifact: Path, backup: Backup, workdir: Path, cancel: threading.Event,
                   identities: Sequence[encryption.Identity] = ()) -> list[str]:
    """Prove an artifact file: size and SHA-256 against the manifest, then (decrypted with `identities` when it is
    encrypted) one decompression (frame checksum) into the engine's check, in a scratch directory inside
    `workdir`. Return the checks that passed: only size and SHA-256 for an encrypted artifact without identities
    (the deep check needs one). Raise IntegrityError naming the first one that failed, SpaceError if `workdir`'s
    volume cannot take the check."""
    if selection.is_encrypted(backup) and not identities:
        prove_file(artifact, backup, cancel)
        return ["size", "sha256"]
    require_space([(workdir, raw_needs(backup))], f"checking {backup.artifact}")
    with _scratch(workdir, "verify") as scratch, \
            _proving(artifact, backup, scratch, cancel, keep_raw=False, identities=identities) as (_, checks):
        return checks



@contextmanager
def proven_raw(artifact: Path, backup: Backup, workdir: Path, cancel: threading.Event,
               extra: list[tuple[Path, int]] = (), identities: Sequence[encryption.Identity] = ()
               ) -> Iterator[tuple[Path, list[str]]]:
    """Yield a temporary, proven raw copy of the backup (in a scratch directory inside `workdir`) and the checks
    that passed; delete it afterwards. `extra` adds space needed elsewhere to the up-front space check; an
    encrypted backup is opened with `identities` (NoIdentity, naming the variables, without any)."""
    if selection.is_encrypted(backup) and not identities:
        raise NoIdentity(no_identity(backup))
    require_space([(workdir, raw_needs(backup)), *extra], f"restoring {backup.artifact}")
    with _scratch(workdir, "restore") as scratch, \
            _proving(artifact, backup, scratch, cancel, keep_raw=True, identities=identities) as (raw, checks):
        assert raw is not None
        yield raw, checks


def raw_needs(backup: Backup) -> int:
    """Return the bytes unpacking the backup needs: its raw size (the artifact's if the manifest lacks it)."""
    raw = backup.manifest.get("raw_size")
    return (raw if isinstance(raw, int) and raw > 0 else backup.size) + HEADROOM


def require_space(needs: list[tuple[Path, int]], purpose: str) -> None:
    """Given (directory, bytes) pairs, each directory on the volume its bytes land on, raise SpaceError for the
    first volume whose free space is short of the sum of everything landing on it."""
    by_volume: dict[int, tuple[list[Path], int]] = {}
    for directory, need in needs:
        device = directory.stat().st_dev
        paths, total = by_volume.get(device, ([], 0))
        by_volume[device] = (paths if directory in paths else [*paths, directory], total + need)
    for paths, total in by_volume.values():
        free = shutil.disk_usage(paths[0]).free
        if free < total:
            where = " and ".join(str(path) for path in paths)
            raise SpaceError(f"{where} has {free >> 20} MiB free but {purpose} needs about {total >> 20} MiB there "
                             "(the unpacked backup, and for a restore over the database its safety copy and the "
                             "restored pages); free space, or restore elsewhere with --to PATH")


def leftovers(target: Path) -> list[Path]:
    """Return the SQLite files beside `target` (`-wal`, `-shm`, `-journal`) that would be read with it."""
    return [path for path in sidecars(target) if path.exists() or path.is_symlink()]


def is_empty_file(path: Path) -> bool:
    """Return whether `path` is a regular file (not a link) of 0 bytes."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == 0


def new_file_problem(target: Path, empty_ok: bool = False) -> str | None:
    """Return why `target` cannot be a restore's new file, or None. With `empty_ok`, a regular file of 0 bytes
    there may be replaced (what SQLite leaves when an app opened a missing database)."""
    if (target.exists() or target.is_symlink()) and not (empty_ok and is_empty_file(target)):
        return f"{target} already exists; restore to a new path, or delete it first"
    if not target.parent.is_dir():
        return f"the directory {target.parent} does not exist; create it or choose another --to path"
    found = leftovers(target)
    if found:
        names = ", ".join(str(path) for path in found)
        return (f"{names} {'is' if len(found) == 1 else 'are'} beside {target}; SQLite would read "
                f"{'it' if len(found) == 1 else 'them'} into the restored database, and {'it' if len(found) == 1 else 'they'} "
                "may hold the only copy of recent commits: move them away yourself, or restore to another path")
    return None


def restore_to_file(artifact: Path, backup: Backup, target: Path, cancel: threading.Event,
                    identities: Sequence[encryption.Identity] = ()) -> list[str]:
    """Write the proven raw backup to the new file `target` (0600). Raise StorageError if it cannot be one.

    The file appears under its name only when complete, and never replaces a file that appeared meanwhile."""
    problem = new_file_problem(target)
    if problem:
        raise StorageError(problem, stage="restore")
    with proven_raw(artifact, backup, target.parent, cancel, identities=identities) as (raw, checks):
        place_new_file(raw, target)
    return checks


def place_new_file(raw: Path, target: Path, empty_ok: bool = False) -> None:
    """Give the proven raw file `raw` (on the volume of `target`) the name `target`, which must still be free (with
    `empty_ok`, or a 0-byte file). Raise StorageError if it is not, or the file cannot be written."""
    problem = new_file_problem(target, empty_ok)  # again: files may have appeared while we unpacked
    if problem:
        raise StorageError(problem, stage="restore")
    try:
        _link_new(raw, target, replace_empty=empty_ok)
    except OSError as error:
        raise StorageError(f"cannot write {target}: {error.strerror or error}", stage="restore") from None


def _link_new(raw: Path, target: Path, replace_empty: bool = False) -> None:
    """Give the fsynced file `raw` the new name `target`, failing if `target` exists (unless `replace_empty` and it
    is a 0-byte file, which is replaced)."""
    files.fsync_path(raw)
    if replace_empty and is_empty_file(target):
        os.replace(raw, target)
        files.fsync_path(target.parent)
        return
    try:
        os.link(raw, target)
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "File exists", str(target)) from None
        os.rename(raw, target)
    files.fsync_path(target.parent)


def restore_over(artifact: Path, backup: Backup, source: Source, workdir: Path, cancel: threading.Event,
                 notify: Callable[[str], None] | None = None, identities: Sequence[encryption.Identity] = ()) -> tuple[Path | None, list[str]]:
    """Restore the backup over the live data of `source`; return the safety copy the engine made first, if any.

    `notify` gets a sentence naming the safety copy before anything changes. Space is checked up front on every
    volume involved (the unpacked backup in `workdir`, and what the engine writes beside the database, the new
    safety copy included). Older safety copies are never counted as room: they go only after the restore
    succeeded (`Source.tidy_copies`); when space is short, the error says how much they take."""
    if backup.kind != source.kind:
        raise SourceError(f"{backup.id} is a backup of kind {backup.kind} and cannot be restored into a {source.kind} source", stage="restore")
    extra = list(source.restore_space(raw_needs(backup)).items())
    try:
        with proven_raw(artifact, backup, workdir, cancel, extra, identities) as (raw, checks):
            safety = source.restore(raw, cancel, notify=notify) if notify is not None else source.restore(raw, cancel)
    except SpaceError as error:
        copies = source.kept_copies()
        if not copies:
            raise
        taken = sum(size for _, size in copies)
        raise SpaceError(f"{error}; {len(copies)} earlier safety copies beside the database take {taken >> 20} MiB "
                         f"(the oldest: {copies[-1][0]}): a restore removes those beyond the newest BACKUP_KEEP_MIN "
                         "only once it has succeeded, so delete the ones you no longer need first") from None
    return safety, checks
