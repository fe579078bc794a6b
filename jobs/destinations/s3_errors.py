"""What went wrong with an S3 call, told apart without turning botocore exceptions into strings (they may echo
request URLs): whether retrying may help, and which kind of failure it is; then the sentence a user acts on."""

from collections.abc import Callable
from dataclasses import dataclass
import socket

from botocore import exceptions as boto_errors
from s3transfer.exceptions import RetriesExceededError

from jobs.errors import DownloadError, JobError, ListError, NotFound, RemoteError, UploadError

TRANSIENT_CODES = {
    "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequests", "InternalError", "ServiceUnavailable",
}
_CLOCK_CODES = {"RequestTimeTooSkewed", "RequestExpired"}
_CLOCK_MESSAGES = ("too skewed", "signature expired", "request has expired")
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired"}
_NETWORK_ERRORS = (
    boto_errors.EndpointConnectionError,
    boto_errors.ConnectTimeoutError,
    boto_errors.ReadTimeoutError,
    boto_errors.ConnectionClosedError,
    boto_errors.ResponseStreamingError,
    boto_errors.IncompleteReadError,
    boto_errors.ProxyConnectionError,
    RetriesExceededError,
)


@dataclass(frozen=True)
class Failure:
    """What went wrong with one S3 call, without its (possibly URL-bearing) message."""

    transient: bool
    kind: str  # "network", "server", "bucket", "denied", "credentials", "clock", "no-credentials", "tls", "missing", "other"
    reason: str


def _network_reason(error: BaseException) -> str:
    if isinstance(error, RetriesExceededError) and error.last_exception is not None:
        return _network_reason(error.last_exception)
    if isinstance(error, boto_errors.ConnectTimeoutError):
        return "connection timed out"
    if isinstance(error, boto_errors.ReadTimeoutError):
        return "read timed out"
    if isinstance(error, boto_errors.ConnectionClosedError):
        return "connection closed before a response"
    if isinstance(error, (boto_errors.ResponseStreamingError, boto_errors.IncompleteReadError)):
        return "the response was cut off"
    seen: set[int] = set()
    cause: BaseException | None = error.kwargs.get("error") if isinstance(error, boto_errors.BotoCoreError) else error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if isinstance(cause, TimeoutError):
            return "timed out"
        if isinstance(cause, socket.gaierror):
            return "host name not found"
        cause = cause.__cause__ or cause.__context__
    return "network error"


def classify(error: Exception) -> Failure:
    """Given an exception from boto3 or s3transfer, say whether retrying may help and why it failed."""
    if isinstance(error, boto_errors.ClientError):
        code = str(error.response.get("Error", {}).get("Code", "")) or "unknown"
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        reason = f"{code}, HTTP {status}" if status and code != str(status) else f"HTTP {status or code}"
        if code in ("NoSuchKey", "NotFound") or (status == 404 and code == "404"):
            return Failure(False, "missing", reason)
        if code == "NoSuchBucket":
            return Failure(False, "bucket", reason)
        # Read, never printed: the server's message may echo request details.
        message = str(error.response.get("Error", {}).get("Message", "")).lower()
        if code in _CLOCK_CODES or any(text in message for text in _CLOCK_MESSAGES):
            return Failure(False, "clock", reason)
        if code in _CREDENTIAL_CODES:
            return Failure(False, "credentials", reason)
        if code in ("AccessDenied", "AllAccessDisabled") or status == 403:
            return Failure(False, "denied", reason)
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return Failure(True, "server", reason)
        return Failure(False, "other", reason)
    if isinstance(error, boto_errors.NoCredentialsError):
        return Failure(False, "no-credentials", "no credentials found")
    if isinstance(error, boto_errors.SSLError):
        return Failure(False, "tls", "TLS handshake or certificate check failed")
    if isinstance(error, _NETWORK_ERRORS):
        return Failure(True, "network", _network_reason(error))
    return Failure(False, "other", type(error).__name__)


# What each operation of S3Destination is called in a sentence, and the error (so the stage) its failure raises.
VERBS = {
    "upload": ("upload", UploadError),
    "confirm": ("confirm the upload of", UploadError),
    "delete": ("delete", UploadError),
    "abort": ("abort the unfinished upload of", UploadError),
    "download": ("download", DownloadError),
    "read": ("read", DownloadError),
    "list": ("list", ListError),
    "list uploads": ("list the unfinished uploads under", ListError),
}
_MULTIPART = ("list uploads", "abort")


def error_for(verb: str, key: str, failure: Failure, attempts: int, *, where: str, bucket: str, endpoint: str,
              bucket_exists: Callable[[], bool], listing: str) -> JobError:
    """Return the error a user reads when the `verb` of `key` (at `where`, s3://bucket/prefix/key) failed with
    `failure` after `attempts`: NotFound for a missing object, else the verb's RemoteError (UploadError,
    DownloadError or ListError). One sentence, no secrets: `endpoint` is already masked. `bucket_exists` is asked
    only when a missing object might be a missing bucket; `listing` is the prefix's URL."""
    action, error = VERBS[verb]
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    kind, cause = failure.kind, failure.reason

    def fail(message: str) -> RemoteError:
        return error(message, kind=kind, cause=cause)

    if kind == "missing":
        if verb in ("download", "read") and key:
            if not bucket_exists():
                return fail(f"the bucket {bucket} does not exist at {endpoint}; check S3_BUCKET and S3_ENDPOINT_URL")
            return NotFound(f"{key} is not in {listing}")
        return fail(f"S3 answered 'not found' to the {verb} of {where} ({cause}); check S3_BUCKET and S3_ENDPOINT_URL")
    if kind == "network":
        return fail(f"cannot reach the S3 endpoint {endpoint} to {action} {where}{tries} ({cause}); "
                    f"check S3_ENDPOINT_URL and the network")
    if kind == "server":
        return fail(f"the S3 endpoint {endpoint} kept failing to {action} {where}{tries} ({cause}); "
                    f"the service may be degraded, try again later")
    if kind == "bucket":
        return fail(f"the bucket {bucket} does not exist at {endpoint}; create it or fix S3_BUCKET")
    if kind == "credentials":
        return fail(f"the S3 endpoint {endpoint} rejected our credentials for {where} ({cause}); "
                    f"check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if kind == "clock":
        return fail(f"the S3 endpoint {endpoint} refused to {action} {where} because of the request time ({cause}): "
                    f"the machine's clock is off by more than 15 minutes; fix NTP (or the host's clock)")
    if kind == "no-credentials":
        return fail(f"no AWS credentials were found to {action} {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if kind == "denied" and verb in _MULTIPART:
        return fail(f"access to {where} was denied ({cause}) when trying to {action} it; grant the key "
                    f"s3:ListBucketMultipartUploads and s3:AbortMultipartUpload, or add a lifecycle rule that "
                    f"aborts incomplete multipart uploads")
    if kind == "denied":
        return fail(f"access to {where} was denied ({cause}); grant the key s3:GetObject, s3:PutObject, "
                    f"s3:ListBucket and s3:DeleteObject on the bucket and prefix")
    if kind == "tls":
        return fail(f"cannot {action} {where}: the {cause} for {endpoint}; check S3_ENDPOINT_URL and the certificate")
    return fail(f"S3 refused to {action} {where} ({cause})")
