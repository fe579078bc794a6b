"""Re-proving and restoring backups: checksum, decompression, the engine's own check, then the restore.

Every restore first produces a verified raw file under a temporary name; only a proven file is renamed into
place or written into a live database.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import threading

from jobs import artifacts, engines
from jobs.backups import Backup
from jobs.engines import Source
from jobs.errors import IntegrityError, SourceError, StorageError


def check_artifact(artifact: Path, backup: Backup, raw_out: Path, cancel: threading.Event) -> list[str]:
    """Prove an artifact file: size and SHA-256 against the manifest, decompression (frame checksum) into the
    new file `raw_out`, then the engine's check. Return the checks that passed. Raise IntegrityError naming the
    first one that failed."""
    size = artifact.stat().st_size
    if size != backup.size:
        raise IntegrityError(f"{backup.artifact} is {size} bytes but its manifest says {backup.size}; the file is damaged or incomplete")
    digest = artifacts.sha256_file(artifact, cancel)
    if digest != backup.sha256:
        raise IntegrityError(f"{backup.artifact} does not match the SHA-256 in its manifest; the file is damaged, use another backup")
    try:
        with artifacts.create_private(raw_out) as out:
            raw_size = artifacts.decompress(artifact, out, cancel)
    except OSError as error:
        raise StorageError(f"cannot write {raw_out}: {error.strerror or error}; check free space", stage="verify") from None
    expected = backup.manifest.get("raw_size")
    if isinstance(expected, int) and raw_size != expected:
        raise IntegrityError(f"{backup.artifact} decompresses to {raw_size} bytes, not the {expected} its manifest says")
    check = engines.verifier(backup.kind)(raw_out, cancel)
    return ["size", "sha256", "zstd frame checksum", check]


@contextmanager
def proven_raw(artifact: Path, backup: Backup, workdir: Path, cancel: threading.Event) -> Iterator[tuple[Path, list[str]]]:
    """Yield a temporary, proven raw copy of the backup and the checks that passed; delete it afterwards."""
    raw = artifacts.temp_path(workdir / f"{backup.id}.{backup.kind}")
    artifacts.require_space(workdir, int(backup.manifest.get("raw_size") or 0) + (16 << 20),
                            f"unpacking and checking {backup.id}", "free space there, or restore elsewhere with --to PATH")
    try:
        checks = check_artifact(artifact, backup, raw, cancel)
        yield raw, checks
    finally:
        raw.unlink(missing_ok=True)


def new_file_problem(target: Path) -> str | None:
    """Return why `target` cannot be a restore's new file, or None."""
    if target.exists() or target.is_symlink():
        return f"{target} already exists; restore to a new path, or delete it first"
    if not target.parent.is_dir():
        return f"the directory {target.parent} does not exist; create it or choose another --to path"
    return None


def restore_to_file(artifact: Path, backup: Backup, target: Path, cancel: threading.Event) -> list[str]:
    """Write the proven raw backup to the new file `target` (0600). Raise StorageError if it cannot be one."""
    problem = new_file_problem(target)
    if problem:
        raise StorageError(problem, stage="restore")
    with proven_raw(artifact, backup, target.parent, cancel) as (raw, checks):
        try:
            artifacts.publish(raw, target)
        except OSError as error:
            raise StorageError(f"cannot write {target}: {error.strerror or error}", stage="restore") from None
    return checks


def restore_over(artifact: Path, backup: Backup, source: Source, workdir: Path, cancel: threading.Event) -> tuple[Path | None, list[str]]:
    """Restore the backup over the live data of `source`; return the safety copy the engine made first, if any."""
    if backup.kind != source.kind:
        raise SourceError(f"{backup.id} is a {backup.kind} backup and cannot be restored into a {source.kind} source", stage="restore")
    with proven_raw(artifact, backup, workdir, cancel) as (raw, checks):
        safety = source.restore(raw, cancel)
    return safety, checks
