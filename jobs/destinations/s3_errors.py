"""What went wrong with an S3 call, told apart without turning botocore exceptions into strings (they may echo
request URLs): whether retrying may help, and which kind of failure it is, for a message a user can act on."""

from dataclasses import dataclass
import socket

from botocore import exceptions as boto_errors
from s3transfer.exceptions import RetriesExceededError

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
