"""Manifests: the JSON file beside each artifact that makes it a backup (id, time, size, SHA-256, format,
source, check). Written whole and fsynced under a temporary name before it is renamed into place
(`jobs.publish`); read as untrusted input, at most MANIFEST_LIMIT bytes of it."""

from datetime import datetime, timezone
import json
import os
from pathlib import Path
import re
from typing import Any

from jobs.files import create_private

MANIFEST_VERSION = 1
MANIFEST_LIMIT = 1 << 20  # bytes: a manifest is a few KB; a destination's `read` refuses anything larger unread


def utc_iso(moment: datetime) -> str:
    """Return an ISO 8601 UTC timestamp with a Z, to the second."""
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp into an aware datetime. Raise ValueError if it is not one."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def whole_number(value: object) -> int | None:
    """Return `value` when a manifest field holds a whole number (0 or more, not a boolean), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def whole_numbers(value: object) -> dict[str, int] | None:
    """Return `value` when a manifest field holds a map of names to whole numbers (row or key counts), else None."""
    if not isinstance(value, dict) or not all(whole_number(count) is not None for count in value.values()):
        return None
    return {str(name): count for name, count in value.items()}


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest` to the new file `path` (0600) and fsync it."""
    with create_private(path) as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


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
