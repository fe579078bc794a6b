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

# `<name>-<stamp>.<kind>.zst`, or `….zst.age` when encrypted with age (jobs.encryption).
ARTIFACT_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)-(?P<stamp>\d{8}T\d{6}Z)\.(?P<kind>[a-z]+)\.zst(?P<age>\.age)?$")
ENCRYPTED_SUFFIX = ".age"
STAMP = "%Y%m%dT%H%M%SZ"
SET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")  # the `<name>` of artifact names, as configured
MANIFEST_SUFFIX = ".json"
TEMP_PREFIX = ".tmp-"
SNAPSHOT_DIR = "snapshot."  # a backup's scratch directory: `.tmp-<pid>-<token>-snapshot.<set>.<random>`
# A backup id as a person writes it: the id, the version 1 id, or the artifact or manifest file name.
_ID = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)-(?P<stamp>\d{8}T\d{6}Z)(?:\.(?P<kind>[a-z]+))?(?:\.zst(?:\.age)?)?(?:\.json)?$")
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
    stamp = match["stamp"]  # as STAMP writes it; read by hand: strptime costs 20 µs, and retention reads 35,000
    try:
        moment = datetime(int(stamp[0:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[9:11]), int(stamp[11:13]),
                          int(stamp[13:15]), tzinfo=timezone.utc)
    except ValueError:
        return None
    return ArtifactName(BackupSet(match["name"], match["kind"]), moment)


def set_of(artifact: str) -> BackupSet | None:
    """Return the backup set of an artifact name, or None if it is not one (see `parse`)."""
    parts = parse(artifact)
    return parts.backup_set if parts else None


def artifact_name(name: str, kind: str, created_at: datetime, encrypted: bool = False) -> str:
    """Return `<name>-<YYYYMMDDTHHMMSSZ>.<kind>.zst` for a backup taken at `created_at` (any time zone), with
    `.age` when it is `encrypted`."""
    return (f"{name}-{created_at.astimezone(timezone.utc).strftime(STAMP)}.{kind}.zst"
            + (ENCRYPTED_SUFFIX if encrypted else ""))


def is_encrypted(artifact: str) -> bool:
    """Return whether an artifact name is an encrypted artifact's (`….zst.age`)."""
    match = ARTIFACT_NAME.match(artifact)
    return bool(match and match["age"])


def manifest_name(artifact: str) -> str:
    """Return the name of an artifact's manifest: `<artifact>.json`."""
    return artifact + MANIFEST_SUFFIX


def backup_id(artifact: str) -> str:
    """Return the backup id of an artifact name: the name without `.zst` or `.zst.age`
    (`app-20261122T020000Z.sqlite`), so that the id names the backup set's kind too, encrypted or not. Version 1
    wrote the name without `.<kind>.zst` (`legacy_id`)."""
    if not ARTIFACT_NAME.match(artifact):
        raise ValueError(f"{artifact!r} is not an artifact name")
    return artifact.removesuffix(ENCRYPTED_SUFFIX).removesuffix(".zst")


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
    if final is None or not final.endswith(MANIFEST_SUFFIX) or not ARTIFACT_NAME.match(final.removesuffix(MANIFEST_SUFFIX)):
        return None  # plain `….zst.json` and encrypted `….zst.age.json` alike
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
