"""`list --json` gives every backup a `flags` list that says why it is special: `future`, `shrunk`,
`empty_allowed`, `encrypted`, `pre-restore` (and `damaged`)."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path

from tests.e2e.test_selection_cli import backups, move_in_time


def edit_manifest(directory: Path, artifact: str, **changes: object) -> None:
    path = directory / f"{artifact}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_list_json_flags_each_kind_of_special_backup(tmp_path: Path, app_db: Path, worker) -> None:
    directory = tmp_path / "backups"
    plain, shrunk, empty, encrypted, safety, ahead = backups(worker, 6, app_db)
    edit_manifest(directory, shrunk, flags=["shrunk"])
    edit_manifest(directory, empty, flags=["empty_allowed", "not-a-flag-we-know"])
    edit_manifest(directory, encrypted, encryption={"recipients": 1, "tool": "age"})
    edit_manifest(directory, safety, reason="pre-restore")
    ahead = move_in_time(directory, ahead, datetime.now(timezone.utc) + timedelta(days=30))

    listed = worker("list", "--json")
    assert listed.code == 0, listed.stderr
    flags = {row["id"]: row["flags"] for row in json.loads(listed.stdout)}
    assert flags == {
        plain.removesuffix(".zst"): [],
        shrunk.removesuffix(".zst"): ["shrunk"],
        empty.removesuffix(".zst"): ["empty_allowed"],
        encrypted.removesuffix(".zst"): ["encrypted"],
        safety.removesuffix(".zst"): ["pre-restore"],
        ahead.removesuffix(".zst"): ["future"],
    }

    shown = worker("list")
    assert shown.code == 0, shown.stderr
    lines = {line.split()[0]: line for line in shown.stdout.splitlines()[1:]}
    assert "SHRUNK" in lines[shrunk.removesuffix(".zst")] and "EMPTY" in lines[empty.removesuffix(".zst")]
    assert "encrypted" in lines[encrypted.removesuffix(".zst")] and "pre-restore" in lines[safety.removesuffix(".zst")]
