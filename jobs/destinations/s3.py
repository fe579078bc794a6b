"""S3 and S3-compatible buckets (AWS, Cloudflare R2, Backblaze B2, MinIO) as a backup destination.

Keys are the flat backup file names, stored as `<prefix>/<key>`. An object appears whole or not at all: a
single PUT or a completed multipart upload is atomic on S3, and a failed multipart upload is aborted.

Checksums: botocore 1.36 and later add CRC32 checksum headers (and aws-chunked bodies) to every upload by
default. On AWS we keep them: S3 verifies each part's checksum, so the bytes stored are the bytes sent. Cloudflare
R2, Backblaze B2 and older MinIO releases reject those requests, so with a custom S3_ENDPOINT_URL the client is
built with `request_checksum_calculation="when_required"` and `response_checksum_validation="when_required"`:
the headers are sent only for operations that require them. Integrity does not rest on them: after an upload we compare
the object's size (and the SHA-256 we store as `sha256` metadata) with the local file, and every restore checks
the artifact's SHA-256 against its manifest.

Retries happen at two levels. botocore retries a single request a few times (so one failed part of a multipart
upload does not restart the whole transfer); around each operation we retry again with capped exponential
backoff, for transient errors only (network, timeouts, HTTP 5xx, throttling). Errors that retrying cannot fix
(missing bucket, denied access, bad credentials) fail at once. Every error becomes one sentence that names the
bucket and key and what to do; it never contains credentials: endpoint URLs are masked, and botocore exceptions,
which may echo request URLs, are never turned into strings — only their error code and HTTP status are used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
import hashlib
import random
import threading
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
import botocore.config
from botocore import exceptions as boto_errors
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from jobs.artifacts import MANIFEST_SUFFIX
from jobs.compression import sha256_file
from jobs.destinations import Entry, too_large
from jobs.destinations.s3_errors import Failure, classify
from jobs.errors import Cancelled, NotFound, StorageError, TooLarge, UploadError
from jobs.files import create_private
from jobs.manifest import MANIFEST_LIMIT
from jobs.redact import mask_url, scrub

MIB = 1 << 20
BOTO_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
TRANSFER = TransferConfig(
    multipart_threshold=64 * MIB,
    multipart_chunksize=8 * MIB,
    max_concurrency=8,  # parts are read from the file as they are sent: memory stays flat, whatever the size
    max_io_queue=64,
    io_chunksize=256 * 1024,
    use_threads=True,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """How often and how patiently we retry a transient failure: `attempts` in all, the wait doubling from
    `first_delay` up to `max_delay` seconds, each wait shortened by up to half at random (jitter)."""

    attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """Given the number of attempts made so far (1 after the first), return how long to wait."""
        return min(self.max_delay, self.first_delay * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def make_client(endpoint_url: str | None, region: str, *, max_attempts: int = BOTO_ATTEMPTS,
                connect_timeout: float = CONNECT_TIMEOUT_S, read_timeout: float = READ_TIMEOUT_S,
                session: boto3.session.Session | None = None) -> Any:
    """Given an optional S3-compatible endpoint and a region, return a boto3 S3 client.

    `max_attempts` counts botocore's tries of one request, the first included. Path-style addressing for custom
    endpoints (MinIO and friends rarely have wildcard DNS), checksums only when an operation requires them (see
    the module docstring). Credentials come from the standard AWS chain; pass a `session` to reuse its loaded
    models when building many clients.
    """
    config = botocore.config.Config(
        # total_max_attempts counts the first try; the older `max_attempts` key counts retries only.
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max(10, TRANSFER.max_request_concurrency * 2),
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # AWS itself verifies the CRC32 checksums botocore sends with every part: keep them (end-to-end integrity).
        # S3-compatible endpoints (R2, B2, older MinIO) reject them: send them only where an operation needs them.
        request_checksum_calculation="when_required" if endpoint_url else "when_supported",
        response_checksum_validation="when_required" if endpoint_url else "when_supported",
    )
    return (session or boto3.session.Session()).client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class _Progress(BaseSubscriber):
    """Stops a transfer (by raising Cancelled inside it) as soon as the worker is asked to stop."""

    def __init__(self, cancel: threading.Event, what: str) -> None:
        self.cancel = cancel
        self.what = what

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"the worker is stopping; the {self.what} was interrupted")


class S3Destination:
    """A bucket (and optional key prefix) holding backups; see the module docstring."""

    location = "s3"

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, region: str, client: Any = None,
                 *, retry: Retry = Retry(), transfer: TransferConfig = TRANSFER,
                 client_options: dict[str, Any] | None = None) -> None:
        self.bucket = bucket
        self.client_options = dict(client_options or {})  # make_client's max_attempts and timeouts
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._client = client
        self.retry = retry
        self.transfer = transfer

    @property
    def client(self) -> Any:
        """The boto3 client, built on first use so that a bad setting fails the upload stage, not the backup."""
        if self._client is None:
            try:
                self._client = make_client(self.endpoint_url, self.region, **self.client_options)
            except (ValueError, boto_errors.BotoCoreError) as error:
                raise UploadError(
                    f"cannot set up the S3 client for s3://{self.bucket}: {scrub(str(error), [])}; "
                    "check S3_REGION, S3_ENDPOINT_URL and AWS_PROFILE"
                ) from None
        return self._client

    def object_key(self, key: str) -> str:
        """Given a backup file name, return its key in the bucket. Raise ValueError if it is not a flat name."""
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"{key!r} is not a backup file name")
        return f"{self.prefix}/{key}" if self.prefix else key

    def url(self, key: str = "") -> str:
        """Return `s3://bucket/prefix/key` for messages."""
        return f"s3://{self.bucket}/{self.object_key(key) if key else self.prefix}".rstrip("/")

    def put(self, path: Path, key: str, cancel: threading.Event) -> None:
        """Upload the file at `path` to `key`, then confirm the object's size and SHA-256 metadata.

        Raise UploadError if the upload fails or cannot be confirmed, StorageError if the file cannot be read,
        Cancelled if `cancel` is set.
        """
        object_key = self.object_key(key)
        try:
            size = path.stat().st_size
            digest = sha256_file(path, cancel)
        except OSError as error:
            raise StorageError(f"cannot read {path} to upload it: {error.strerror or error}") from None
        extra = {
            "Metadata": {"sha256": digest},
            "ContentType": "application/json" if key.endswith(MANIFEST_SUFFIX) else "application/zstd",
        }

        def upload() -> None:
            if cancel.is_set():
                raise Cancelled("the worker is stopping; the upload was not started")
            with self._transfers() as manager:
                future = manager.upload(str(path), self.bucket, object_key, extra, [_Progress(cancel, "upload")])
                future.result()

        self._retrying("upload", key, upload, cancel)
        head = self._retrying("confirm", key, lambda: self.client.head_object(Bucket=self.bucket, Key=object_key), cancel)
        stored_size = int(head.get("ContentLength", -1))
        stored_digest = head.get("Metadata", {}).get("sha256")
        if stored_size != size:
            raise UploadError(
                f"{self.url(key)} is {stored_size} bytes after the upload but {path.name} is {size}; "
                "the upload is not confirmed"
            )
        if stored_digest is not None and stored_digest != digest:
            raise UploadError(
                f"{self.url(key)} carries SHA-256 {stored_digest[:12]}… after the upload but {path.name} has "
                f"{digest[:12]}…; another writer may use the same bucket and prefix"
            )

    def get(self, key: str, path: Path, cancel: threading.Event) -> None:
        """Download `key` into the new file `path` (mode 0600). Raise NotFound, UploadError, StorageError or
        Cancelled; on any error `path` does not exist afterwards."""
        object_key = self.object_key(key)

        def download() -> None:
            if cancel.is_set():
                raise Cancelled("the worker is stopping; the download was not started")
            try:
                handle = create_private(path)
            except OSError as error:
                raise StorageError(f"cannot create {path} for the download: {error.strerror or error}") from None
            done = False
            try:
                with handle, self._transfers() as manager:
                    future = manager.download(self.bucket, object_key, handle, None, [_Progress(cancel, "download")])
                    future.result()
                done = True
            finally:
                if not done:
                    path.unlink(missing_ok=True)

        try:
            self._retrying("download", key, download, cancel)
        except OSError as error:
            raise StorageError(f"cannot write {path} while downloading {self.url(key)}: {error.strerror or error}") from None

    def read(self, key: str, cancel: threading.Event | None = None) -> bytes:
        """Return a small object's bytes (a manifest), at most MANIFEST_LIMIT. Raise TooLarge if it is larger
        (having read none of it when S3 says its size, else at most MANIFEST_LIMIT + 1 bytes), NotFound if it is
        missing, Cancelled if `cancel` is set, UploadError otherwise."""
        object_key = self.object_key(key)

        def fetch() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            body = response["Body"]  # botocore's StreamingBody; its `with` yields the raw stream, so close by hand
            try:
                if int(response.get("ContentLength", 0)) > MANIFEST_LIMIT:  # said before a byte of it is read
                    raise TooLarge(too_large(self.url(key)))
                data = b""
                while len(data) <= MANIFEST_LIMIT:  # until b"": botocore then checks that the body came whole
                    chunk = body.read(MANIFEST_LIMIT + 1 - len(data))
                    if not chunk:
                        break
                    data += chunk
            finally:
                body.close()  # what is left unread stays on the server: the connection is dropped
            if len(data) > MANIFEST_LIMIT:
                raise TooLarge(too_large(self.url(key)))
            return data

        return self._retrying("read", key, fetch, cancel)

    def list(self, cancel: threading.Event | None = None) -> list[Entry]:
        """Return every object directly under the prefix as (key relative to the prefix, size). Raise Cancelled
        if `cancel` is set (checked between pages), UploadError if the bucket cannot be listed."""
        start = f"{self.prefix}/" if self.prefix else ""

        def fetch() -> list[Entry]:
            entries = []
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start, Delimiter="/")
            for page in pages:
                _stop_if(cancel, f"the listing of {self.url()}")
                for item in page.get("Contents", []):
                    key = item["Key"][len(start):]
                    if key and "/" not in key:
                        entries.append(Entry(key=key, size=int(item["Size"]), tag=str(item.get("ETag", ""))))
            return entries

        return self._retrying("list", "", fetch, cancel)

    def sha256(self, key: str, cancel: threading.Event | None = None) -> str:
        """Return the hex SHA-256 of the object `key`, streamed (never written to disk). Raise NotFound, Cancelled
        (checked between chunks) or UploadError."""
        object_key = self.object_key(key)

        def digest() -> str:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            body, hasher = response["Body"], hashlib.sha256()
            try:
                while chunk := body.read(MIB):
                    _stop_if(cancel, f"checking {self.url(key)}")
                    hasher.update(chunk)
            finally:
                body.close()
            return hasher.hexdigest()

        return self._retrying("read", key, digest, cancel)

    def delete(self, key: str, cancel: threading.Event | None = None) -> None:
        """Remove `key`; a missing key is not an error. Raise UploadError if the bucket refuses, Cancelled if
        `cancel` is set."""
        object_key = self.object_key(key)
        self._retrying("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=object_key), cancel)

    def abort_incomplete(self, match: Callable[[str], bool], older_than: timedelta,
                         cancel: threading.Event | None = None) -> list[str]:
        """Abort the multipart uploads directly under the prefix whose key `match` accepts and that started more
        than `older_than` ago (a killed upload leaves its parts billed until aborted); return their keys.

        Raise UploadError if the uploads cannot be listed or aborted, Cancelled if `cancel` is set.
        """
        start = f"{self.prefix}/" if self.prefix else ""
        cutoff = datetime.now(timezone.utc) - older_than

        def fetch() -> list[tuple[str, str]]:
            found = []
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                _stop_if(cancel, f"the listing of unfinished uploads in {self.url()}")
                for upload in page.get("Uploads", []):
                    key = upload["Key"][len(start):]
                    if key and "/" not in key and match(key) and upload["Initiated"] <= cutoff:
                        found.append((key, upload["UploadId"]))
            return found

        aborted = []
        for key, upload_id in self._retrying("list uploads", "", fetch, cancel):
            self._retrying("abort", key, lambda: self._abort(key, upload_id), cancel)
            aborted.append(key)
        return aborted

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key(key), UploadId=upload_id)
        except boto_errors.ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchUpload":  # gone meanwhile: nothing to do
                raise

    @contextmanager
    def _transfers(self) -> Iterator[TransferManager]:
        with TransferManager(self.client, self.transfer) as manager:
            yield manager

    def _retrying(self, verb: str, key: str, call: Callable[[], T], cancel: threading.Event | None) -> T:
        """Run `call`, retrying transient S3 failures with backoff; turn failures into NotFound or UploadError."""
        waiter = cancel if cancel is not None else threading.Event()
        attempt = 0
        while True:
            attempt += 1
            _stop_if(cancel, f"the {verb} of {self.url(key)}")
            try:
                return call()
            except (boto_errors.BotoCoreError, boto_errors.ClientError, RetriesExceededError) as error:
                failure = classify(error)
                if not failure.transient or attempt >= self.retry.attempts:
                    raise self._error(verb, key, failure, attempt) from None
            if waiter.wait(self.retry.delay(attempt)):
                raise Cancelled(f"the worker is stopping; the {verb} of {self.url(key)} was abandoned between retries")

    def _error(self, verb: str, key: str, failure: Failure, attempts: int) -> Exception:
        """Return the NotFound or UploadError a user reads for `failure`: one sentence, no secrets."""
        where = self.url(key)
        endpoint = mask_url(self.endpoint_url or self.client.meta.endpoint_url or "AWS S3")
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if failure.kind == "missing":
            if verb in ("download", "read") and key:
                if not self._bucket_exists():
                    return UploadError(f"the bucket {self.bucket} does not exist at {endpoint}; check S3_BUCKET and S3_ENDPOINT_URL")
                return NotFound(f"{key} is not in {self.url()}")
            return UploadError(f"S3 answered 'not found' to the {verb} of {where} ({failure.reason}); check S3_BUCKET and S3_ENDPOINT_URL")
        if failure.kind == "network":
            return UploadError(
                f"cannot reach the S3 endpoint {endpoint} to {_VERBS[verb]} {where}{tries} ({failure.reason}); "
                f"check S3_ENDPOINT_URL and the network"
            )
        if failure.kind == "server":
            return UploadError(
                f"the S3 endpoint {endpoint} kept failing to {_VERBS[verb]} {where}{tries} ({failure.reason}); "
                f"the service may be degraded, try again later"
            )
        if failure.kind == "bucket":
            return UploadError(f"the bucket {self.bucket} does not exist at {endpoint}; create it or fix S3_BUCKET")
        if failure.kind == "credentials":
            return UploadError(
                f"the S3 endpoint {endpoint} rejected our credentials for {where} ({failure.reason}); "
                f"check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if failure.kind == "clock":
            return UploadError(
                f"the S3 endpoint {endpoint} refused to {_VERBS[verb]} {where} because of the request time "
                f"({failure.reason}): the machine's clock is off by more than 15 minutes; fix NTP (or the host's clock)"
            )
        if failure.kind == "no-credentials":
            return UploadError(f"no AWS credentials were found to {_VERBS[verb]} {where}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if failure.kind == "denied":
            return UploadError(
                f"access to {where} was denied ({failure.reason}); grant the key s3:GetObject, s3:PutObject, "
                f"s3:ListBucket and s3:DeleteObject on the bucket and prefix"
            )
        if failure.kind == "tls":
            return UploadError(f"cannot {_VERBS[verb]} {where}: the {failure.reason} for {endpoint}; check S3_ENDPOINT_URL and the certificate")
        return UploadError(f"S3 refused to {_VERBS[verb]} {where} ({failure.reason})")

    def _bucket_exists(self) -> bool:
        """Return False only if the bucket is known to be missing (a HEAD answers 404 for key and bucket alike)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except boto_errors.ClientError as error:
            return classify(error).kind not in ("missing", "bucket")
        except boto_errors.BotoCoreError:
            return True
        return True


_VERBS = {
    "upload": "upload",
    "confirm": "confirm the upload of",
    "download": "download",
    "read": "read",
    "list": "list",
    "delete": "delete",
    "list uploads": "list the unfinished uploads under",
    "abort": "abort the unfinished upload of",
}


def _stop_if(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"the worker is stopping; {what} was abandoned")
