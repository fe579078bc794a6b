"""The few named errors a job raises. Each message is one sentence a user can act on."""


class JobError(Exception):
    """A job failed for a reason we understand; `stage` says where."""

    stage = "job"

    def __init__(self, message: str, *, stage: str | None = None, fields: dict[str, object] | None = None) -> None:
        super().__init__(message)
        if stage is not None:
            self.stage = stage
        self.fields = fields or {}  # what the run had produced before it failed (artifact, sizes), for the log


class SourceError(JobError):
    """The database to back up (or restore into) is missing, unreadable or refuses us."""

    stage = "snapshot"


class Unreachable(SourceError):
    """The database server does not answer (yet): the connection was refused or timed out, its host name does not
    resolve, or it is starting up. Worth asking again at start, when a database service may come up after us."""


class IntegrityError(JobError):
    """A snapshot or an artifact failed its check: checksum, decompression or the engine's own check."""

    stage = "verify"


class DecryptError(IntegrityError):
    """An encrypted artifact cannot be decrypted: no configured identity opens it, or its age stream is damaged,
    altered or cut short (issue 20)."""


class WrongIdentity(DecryptError):
    """None of the configured identities opens an encrypted backup: a configuration to fix, not damage, so never
    a reason to take an older backup in its place (jobs.selection.latest, restore at start re-raise it)."""


class NoIdentity(JobError):
    """An encrypted backup is to be restored but no identity is configured (BACKUP_ENCRYPTION_IDENTITY…): not
    damage, so no older backup is ever taken in its place."""

    stage = "restore"


class SpaceError(JobError):
    """The volume cannot hold what we are about to write."""

    stage = "preflight"


class StorageError(JobError):
    """Writing, reading or deleting a backup file failed."""

    stage = "store"


class TooLarge(StorageError):
    """An object is larger than may be read whole (a manifest over MANIFEST_LIMIT): it is not one of ours."""


class RemoteError(JobError):
    """The bucket (the off-site copy) failed us; the subclass, and so `stage`, says at what."""

    stage = "remote"

    def __init__(self, message: str, *, kind: str = "", cause: str = "", stage: str | None = None,
                 fields: dict[str, object] | None = None) -> None:
        super().__init__(message, stage=stage, fields=fields)
        self.kind = kind  # what failed, as jobs.destinations.s3_errors.Failure.kind: "denied", "network", ...
        self.cause = cause  # the S3 error code and HTTP status, or the network failure; never a secret


class UploadError(RemoteError):
    """The off-site copy could not be made, confirmed or deleted."""

    stage = "upload"


class DownloadError(RemoteError):
    """An object in the bucket could not be read or downloaded."""

    stage = "download"


class ListError(RemoteError):
    """The bucket (its objects or its unfinished uploads) could not be listed."""

    stage = "list"


class BusyError(JobError):
    """Another run of the same job holds the lock."""

    stage = "lock"


class Cancelled(JobError):
    """The worker is stopping (SIGTERM or SIGINT); the job stopped cleanly where it was."""

    stage = "cancelled"


class NotFound(JobError):
    """The backup asked for does not exist."""

    stage = "select"
