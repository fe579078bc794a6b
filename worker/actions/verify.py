"""`verify`: re-prove a backup: size and checksum, decompression, the engine's own check."""

from pathlib import Path
import tempfile
from typing import Any

from jobs import restore as restoring
from jobs.artifacts import temp_prefix
from jobs.encryption import IDENTITY_FILE_VARIABLE, IDENTITY_VARIABLE
from jobs.selection import is_encrypted
from worker.context import Context
from worker.output import report_failure, say
from worker.selection import fetch, reading, scratch_dir, wanted, where
from worker.runs import run_job


def cmd_verify(ctx: Context, ident: str | None, remote: bool, source_name: str | None = None) -> int:
    destination, location = where(ctx, remote)
    scratch = scratch_dir(ctx)
    request = wanted(ctx, destination, location, ident, source_name)

    def work() -> dict[str, Any]:
        with reading(ctx, remote):
            backup = request.pick(destination, location, ctx)
            with tempfile.TemporaryDirectory(prefix=temp_prefix() + "verify-", dir=scratch) as temporary:
                artifact = fetch(ctx, destination, backup, Path(temporary))
                checks = restoring.check_artifact(artifact, backup, Path(temporary), ctx.cancel,
                                                  ctx.config.encryption_identities)
        fields: dict[str, Any] = {"backup": backup.id, "location": destination.location, "checks": checks}
        if is_encrypted(backup) and not ctx.config.encryption_identities:  # the deep check needs the identity
            fields["note"] = (f"{backup.id} is encrypted: its decryption, decompression and the engine's check need "
                              f"the identity ({IDENTITY_VARIABLE} or {IDENTITY_FILE_VARIABLE})")
        return fields

    outcome = run_job("verify", ctx.catalog, work)
    if outcome.ok:
        say(f"{outcome.fields['backup']} is sound: {', '.join(outcome.fields['checks'])} passed")
        if outcome.fields.get("note"):
            say(f"note: {outcome.fields['note']}")
    return report_failure(outcome)
