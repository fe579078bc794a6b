"""`list`: backups newest first, local and (with --remote, or when the volume has none) the bucket's."""

from datetime import datetime, timezone
import json
from typing import Any

import structlog

from jobs.artifacts import parse_iso
from jobs.backups import list_backups
from worker.actions.context import EXIT_OK, Context, UsageError
from worker.actions.output import human_age, human_size, say

log = structlog.get_logger("worker.actions.listing")


def _merged(ctx: Context, remote_too: bool) -> list[dict[str, Any]]:
    local, problems = list_backups(ctx.local)
    for problem in problems:
        log.warning("list.skipped_file", problem=problem)
    rows: dict[str, dict[str, Any]] = {b.id: {**b.manifest, "location": "local"} for b in local}
    remote = ctx.remote() if (remote_too or not local) else None
    if remote is not None:
        found, problems = list_backups(remote)
        for problem in problems:
            log.warning("list.skipped_object", problem=problem)
        for backup in found:
            if backup.id in rows:
                rows[backup.id]["location"] = "both"
            else:
                rows[backup.id] = {**backup.manifest, "location": "s3"}
    return sorted(rows.values(), key=lambda row: (row["created_at"], row["id"]), reverse=True)


def cmd_list(ctx: Context, as_json: bool, remote: bool) -> int:
    if remote and ctx.config.s3 is None:
        raise UsageError("--remote needs S3_BUCKET (and its credentials) to be set")
    rows = _merged(ctx, remote)
    if as_json:
        say(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    if not rows:
        say(f"no backups in {ctx.config.backup_dir}" + (" or the bucket" if ctx.config.s3 else ""))
        return EXIT_OK
    header = f"{'ID':<40} {'CREATED (UTC)':<21} {'AGE':>8} {'SIZE':>10} {'RAW':>10}  {'VERIFIED':<24} LOCATION"
    say(header)
    now = datetime.now(timezone.utc)
    for row in rows:
        age = human_age((now - parse_iso(row["created_at"])).total_seconds())
        verified = row["verified"].get("check", "yes") if isinstance(row.get("verified"), dict) else "no"
        say(f"{row['id']:<40} {row['created_at']:<21} {age:>8} {human_size(row['size']):>10} "
            f"{human_size(row.get('raw_size')):>10}  {verified:<24} {row['location']}")
    return EXIT_OK
