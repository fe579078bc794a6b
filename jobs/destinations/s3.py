"""S3 and S3-compatible buckets (AWS, Cloudflare R2, Backblaze B2, MinIO) as a backup destination.

Keys are the flat backup file names, stored as `<prefix>/<key>`. An object appears whole or not at all: a
single PUT or a completed multipart upload is atomic on S3, and a failed multipart upload is aborted.

How the client is built (checksums for AWS and for S3-compatible endpoints, timeouts, transfer sizes) is
jobs.destinations.s3_client; which endpoint the environment names, jobs.destinations.s3_endpoint.

Around each operation we retry with capped exponential backoff (`Retry`), for transient errors only (network,
timeouts, HTTP 5xx, throttling); botocore also retries each request. Errors that retrying cannot fix (missing
bucket, denied access, bad credentials) fail at once. Every error becomes one sentence that names the bucket and
key and what to do (jobs.destinations.s3_errors), raised as UploadError (writes and deletes), DownloadError
(reads) or ListError (listings), so a run's stage says which; it never contains credentials: endpoint URLs are
masked, and botocore exceptions, which may echo request URLs, are never turned into strings — only their error
code and HTTP status are used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
import hashlib
import threading
from pathlib import Path
from typing import Any, TypeVar

from boto3.s3.transfer import TransferConfig
from botocore import exceptions as boto_errors
from s3transfer.exceptions import RetriesExceededError
from s3transfer.manager import TransferManager

from jobs.artifacts import MANIFEST_SUFFIX
from jobs.compression import sha256_file
from jobs.destinations import Entry, too_large
from jobs.destinations.s3_client import MIB, TRANSFER, Progress, Retry, make_client, stop_if
from jobs.destinations.s3_errors import VERBS, Failure, classify, error_for
from jobs.errors import Cancelled, JobError, RemoteError, StorageError, TooLarge, UploadError
from jobs.files import create_private
from jobs.manifest import MANIFEST_LIMIT
from jobs.redact import mask_url, scrub

__all__ = ["Retry", "S3Destination", "make_client"]  # Retry and make_client are jobs.destinations.s3_client's

T = TypeVar("T")


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
        """The boto3 client, built on first use so that a bad setting fails the operation (its stage), not the
        backup. Raise RemoteError if it cannot be built."""
        if self._client is None:
            try:
                self._client = make_client(self.endpoint_url, self.region, **self.client_options)
            except (ValueError, boto_errors.BotoCoreError) as error:
                raise RemoteError(
                    f"cannot set up the S3 client for s3://{self.bucket}: {scrub(str(error), [])}; "
                    "check S3_REGION, S3_ENDPOINT_URL and AWS_PROFILE", kind="setup", cause=type(error).__name__
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
                future = manager.upload(str(path), self.bucket, object_key, extra, [Progress(cancel, "upload")])
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
        """Download `key` into the new file `path` (mode 0600). Raise NotFound, DownloadError, StorageError or
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
                    future = manager.download(self.bucket, object_key, handle, None, [Progress(cancel, "download")])
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
        missing, Cancelled if `cancel` is set, DownloadError otherwise."""
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
        if `cancel` is set (checked between pages), ListError if the bucket cannot be listed."""
        start = f"{self.prefix}/" if self.prefix else ""

        def fetch() -> list[Entry]:
            entries = []
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start, Delimiter="/")
            for page in pages:
                stop_if(cancel, f"the listing of {self.url()}")
                for item in page.get("Contents", []):
                    key = item["Key"][len(start):]
                    if key and "/" not in key:
                        entries.append(Entry(key=key, size=int(item["Size"]), tag=str(item.get("ETag", ""))))
            return entries

        return self._retrying("list", "", fetch, cancel)

    def sha256(self, key: str, cancel: threading.Event | None = None) -> str:
        """Return the hex SHA-256 of the object `key`, streamed (never written to disk). Raise NotFound, Cancelled
        (checked between chunks) or DownloadError."""
        object_key = self.object_key(key)

        def digest() -> str:
            response = self.client.get_object(Bucket=self.bucket, Key=object_key)
            body, hasher = response["Body"], hashlib.sha256()
            try:
                while chunk := body.read(MIB):
                    stop_if(cancel, f"checking {self.url(key)}")
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

        Raise ListError if the uploads cannot be listed, UploadError if one cannot be aborted, Cancelled if
        `cancel` is set.
        """
        start = f"{self.prefix}/" if self.prefix else ""
        cutoff = datetime.now(timezone.utc) - older_than

        def fetch() -> list[tuple[str, str]]:
            found = []
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                stop_if(cancel, f"the listing of unfinished uploads in {self.url()}")
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
        """Run `call`, retrying transient S3 failures with backoff; turn failures into NotFound or the verb's
        RemoteError (jobs.destinations.s3_errors.VERBS)."""
        stop_if(cancel, f"the {verb} of {self.url(key)}")
        try:
            self.client
        except RemoteError as error:  # the client cannot be built: the verb's error, so that its stage is right
            raise VERBS[verb][1](str(error), kind=error.kind, cause=error.cause) from None
        waiter = cancel if cancel is not None else threading.Event()
        attempt = 0
        while True:
            attempt += 1
            stop_if(cancel, f"the {verb} of {self.url(key)}")
            try:
                return call()
            except (boto_errors.BotoCoreError, boto_errors.ClientError, RetriesExceededError) as error:
                failure = classify(error)
                if not failure.transient or attempt >= self.retry.attempts:
                    raise self._error(verb, key, failure, attempt) from None
            if waiter.wait(self.retry.delay(attempt)):
                raise Cancelled(f"the worker is stopping; the {verb} of {self.url(key)} was abandoned between retries")

    def _error(self, verb: str, key: str, failure: Failure, attempts: int) -> JobError:
        """Return the NotFound or RemoteError a user reads for `failure`: one sentence, no secrets."""
        endpoint = mask_url(self.endpoint_url or self.client.meta.endpoint_url or "AWS S3")
        return error_for(verb, key, failure, attempts, where=self.url(key), bucket=self.bucket, endpoint=endpoint,
                         bucket_exists=self._bucket_exists, listing=self.url())

    def _bucket_exists(self) -> bool:
        """Return False only if the bucket is known to be missing (a HEAD answers 404 for key and bucket alike)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except boto_errors.ClientError as error:
            return classify(error).kind not in ("missing", "bucket")
        except boto_errors.BotoCoreError:
            return True
        return True
