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


class SpaceError(JobError):
    """The volume cannot hold what we are about to write."""

    stage = "preflight"


class StorageError(JobError):
    """Writing, reading or deleting a backup file failed."""

    stage = "store"


class TooLarge(StorageError):
    """An object is larger than may be read whole (a manifest over MANIFEST_LIMIT): it is not one of ours."""


class UploadError(JobError):
    """The off-site copy could not be made or read."""

    stage = "upload"


class BusyError(JobError):
    """Another run of the same job holds the lock."""

    stage = "lock"


class Cancelled(JobError):
    """The worker is stopping (SIGTERM or SIGINT); the job stopped cleanly where it was."""

    stage = "cancelled"


class NotFound(JobError):
    """The backup asked for does not exist."""

    stage = "select"
