"""Publishing a backup so that a crash at any moment leaves either a whole backup or nothing that counts as one.

Both files are complete and fsynced under temporary names before either is renamed; then the artifact is renamed
into place, then the manifest (a backup exists only when its manifest does). A SIGKILL between the two renames
leaves an artifact of our naming without a manifest: an orphan. At start and at each backup's stale sweep the
orphan is re-proved against the temporary manifest the killed run left (same artifact, size and SHA-256) and
that manifest is renamed into place; without one it is removed: it is not a backup and holds a full copy's disk.
"""

from collections.abc import Collection
import os
from pathlib import Path

from jobs.artifacts import is_stale_temporary, manifest_name, set_of, temporary_manifest_of
from jobs.compression import sha256_file
from jobs.files import fsync_path
from jobs.manifest import read_manifest


def publish_backup(temp_artifact: Path, temp_manifest: Path, artifact: Path) -> None:
    """Rename the complete temporary files into place: the artifact, then its manifest, fsyncing the directory
    after each. If the manifest cannot be renamed the artifact is removed again: no orphan is left."""
    fsync_path(temp_artifact)
    fsync_path(temp_manifest)
    os.rename(temp_artifact, artifact)
    fsync_path(artifact.parent)
    try:
        os.rename(temp_manifest, artifact.with_name(manifest_name(artifact.name)))
        fsync_path(artifact.parent)
    except BaseException:
        artifact.unlink(missing_ok=True)
        raise


def recover_orphans(directory: Path, sets: Collection[str] | None = None) -> list[dict[str, str]]:
    """Re-prove or remove the artifacts in `directory` that have no manifest; return what was done to each
    (`artifact`, `action`: restored, removed or kept, and `reason`). Call under the lock of each set in `sets`
    (every set when None): the artifacts of other sets are theirs to settle.

    An orphan is restored when a temporary manifest left by a dead run describes it (same name, size and
    SHA-256); else it is removed if this user wrote it (our uid, mode 0600), and kept (with a reason) if not."""
    if not directory.is_dir():
        return []
    names = {child.name for child in directory.iterdir()}
    leftovers: dict[str, list[str]] = {}
    for name in names:
        artifact = temporary_manifest_of(name)
        if artifact and is_stale_temporary(name):
            leftovers.setdefault(artifact, []).append(name)
    done = []
    for name in sorted(names):
        found = set_of(name)
        if not found or manifest_name(name) in names:
            continue
        if sets is not None and found.name not in sets:
            continue
        path = directory / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if not path.is_file() or path.is_symlink():
            continue
        proof = _matching_manifest(path, info.st_size, leftovers.get(name, []))
        if proof is not None:
            os.rename(directory / proof, directory / manifest_name(name))
            fsync_path(directory)
            done.append({"artifact": name, "action": "restored",
                         "reason": f"its complete manifest was left as {proof} by a run killed while publishing"})
        elif info.st_uid == os.geteuid() and info.st_mode & 0o077 == 0:
            path.unlink()
            fsync_path(directory)
            done.append({"artifact": name, "action": "removed",
                         "reason": "an artifact without a manifest (a run killed while publishing) is not a backup"})
        else:
            done.append({"artifact": name, "action": "kept",
                         "reason": "it has no manifest but this worker did not write it (owner or mode differ); it is not counted"})
    return done


def _matching_manifest(artifact: Path, size: int, candidates: list[str]) -> str | None:
    """Return the first candidate temporary manifest that describes `artifact` exactly, or None."""
    for candidate in candidates:
        try:
            manifest = read_manifest((artifact.parent / candidate).read_bytes(), artifact.name)
        except (OSError, ValueError):
            continue
        if manifest.get("artifact") != artifact.name or manifest["size"] != size:
            continue
        if sha256_file(artifact) == manifest["sha256"]:
            return candidate
    return None
