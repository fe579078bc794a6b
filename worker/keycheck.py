"""Whether the configured identity opens the backups it is there to open, asked before the disaster rather than
during it (issue 20): `config` and `run` (before restore at start) exit 2 when BACKUP_ENCRYPTION_IDENTITY (or
…_FILE) opens none of the newest encrypted backup of a configured set, telling by a trial decryption of that
artifact's age header (jobs.encryption.opens; SSH identities cannot be turned into a recipient to compare)."""

from jobs import encryption
from jobs.backups import list_backups
from jobs.errors import DecryptError
from jobs.selection import is_encrypted
from worker.context import Context, UsageError


def identity_problem(ctx: Context) -> str | None:
    """Return why the configured identities cannot open the newest encrypted backup on the volume of a configured
    set, as one sentence naming the backup, its recipients' fingerprints and the variable; None when they open
    each such backup, or when no identity is configured (keeping it elsewhere is a choice, see docs/encryption.md)."""
    identities = ctx.config.encryption_identities
    if not identities:
        return None
    variable = encryption.IDENTITY_FILE_VARIABLE if ctx.config.encryption_identity_file else encryption.IDENTITY_VARIABLE
    for backup_set in ctx.backup_sets():
        backups, _ = list_backups(ctx.local, backup_set, ctx.cancel)
        newest = next((backup for backup in backups if is_encrypted(backup) and backup.damage is None), None)
        if newest is None:
            continue
        try:
            with ctx.local.path(newest.artifact).open("rb") as handle:
                if encryption.opens(handle, identities, newest.artifact):
                    continue
        except (OSError, DecryptError):
            continue  # unreadable or damaged there: verify and restore say so, naming it
        field = newest.manifest.get("encryption")
        recipients = field.get("recipients") if isinstance(field, dict) else None
        shown = ", ".join(str(item)[:16] for item in recipients) if isinstance(recipients, list) else "unknown"
        return (f"{variable} opens none of the recipients of {newest.id}, the newest encrypted backup of "
                f"{backup_set} (recipients {shown}), so a restore would fail when it is needed: set the identity "
                f"whose recipient is in BACKUP_ENCRYPTION_RECIPIENTS (backup-worker keygen prints the pair), or "
                f"unset {variable} to keep the identity elsewhere")
    return None


def require_identity_opens(ctx: Context) -> None:
    """Raise UsageError (exit 2) with `identity_problem`'s sentence, if any."""
    problem = identity_problem(ctx)
    if problem:
        raise UsageError(problem)


def require_recipients_for_backups(ctx: Context) -> None:
    """Raise UsageError (exit 2) when an identity is configured but no recipient is: whoever set the identity
    meant the backups to be encrypted, and they would be stored (and uploaded) in clear. Asked by the commands
    that write backups (`backup`, `run`); a restore-only machine with just the identity is fine."""
    if ctx.config.encryption_identities and not ctx.config.encryption_recipients:
        variable = (encryption.IDENTITY_FILE_VARIABLE if ctx.config.encryption_identity_file
                    else encryption.IDENTITY_VARIABLE)
        raise UsageError(f"{variable} is set but {encryption.RECIPIENTS_VARIABLE} is not, so new backups would be "
                         f"stored unencrypted: set {encryption.RECIPIENTS_VARIABLE} to the identity's recipient "
                         "(`backup-worker keygen` printed it as `# public key: age1…`), or unset the identity on "
                         "this service")
