"""The boto3 client and transfer settings behind jobs.destinations.s3: how we talk to a bucket, not what we do there.

Checksums: botocore 1.36 and later add CRC32 checksum headers (and aws-chunked bodies) to every upload by
default. On AWS we keep them: S3 verifies each part's checksum, so the bytes stored are the bytes sent. Cloudflare
R2, Backblaze B2, Ceph and older MinIO releases reject those requests, so with a custom endpoint (S3_ENDPOINT_URL,
or botocore's own AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL: see jobs.destinations.s3_endpoint) the client is built
with `request_checksum_calculation="when_required"` and `response_checksum_validation="when_required"`: the headers
are sent only for operations that require them. Integrity does not rest on them: after an upload we compare the
object's size (and the SHA-256 we store as `sha256` metadata) with the local file, and every restore checks the
artifact's SHA-256 against its manifest.

Retries happen at two levels. botocore retries a single request a few times (so one failed part of a multipart
upload does not restart the whole transfer); around each operation S3Destination retries again with capped
exponential backoff (`Retry`), for transient errors only.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
import random
import threading
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
import botocore.config
from s3transfer.subscribers import BaseSubscriber

from jobs.destinations.s3_endpoint import configured_endpoint
from jobs.errors import Cancelled

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

    Without `endpoint_url`, the endpoint botocore would take from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL is used,
    and counts as S3-compatible. `max_attempts` counts botocore's tries of one request, the first included.
    Path-style addressing for custom endpoints (MinIO and friends rarely have wildcard DNS), checksums only when an
    operation requires them (see the module docstring). Credentials come from the standard AWS chain; pass a
    `session` to reuse its loaded models when building many clients.
    """
    if endpoint_url is None and (named := configured_endpoint(os.environ)) is not None:
        endpoint_url = named[1]
    config = botocore.config.Config(
        # total_max_attempts counts the first try; the older `max_attempts` key counts retries only.
        retries={"total_max_attempts": max_attempts, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max(10, TRANSFER.max_request_concurrency * 2),
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # AWS itself verifies the CRC32 checksums botocore sends with every part: keep them (end-to-end integrity).
        # S3-compatible endpoints (R2, B2, Ceph, older MinIO) reject them: send them only where an operation needs them.
        request_checksum_calculation="when_required" if endpoint_url else "when_supported",
        response_checksum_validation="when_required" if endpoint_url else "when_supported",
    )
    return (session or boto3.session.Session()).client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class Progress(BaseSubscriber):
    """Stops a transfer (by raising Cancelled inside it) as soon as the worker is asked to stop."""

    def __init__(self, cancel: threading.Event, what: str) -> None:
        self.cancel = cancel
        self.what = what

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"the worker is stopping; the {self.what} was interrupted")


def stop_if(cancel: threading.Event | None, what: str) -> None:
    """Raise Cancelled if `cancel` is set: `what` was abandoned."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"the worker is stopping; {what} was abandoned")
