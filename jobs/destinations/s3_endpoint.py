"""Which S3 endpoint the environment names, read without importing boto3 (the configuration checks it at start).

`S3_ENDPOINT_URL` is ours; botocore also reads `AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL` by itself. Whichever
names the endpoint, it is an S3-compatible store (MinIO, R2, B2, Ceph, SeaweedFS) and the client is built for
one: path-style addressing, checksums only where an operation requires them (Ceph refuses botocore's default
aws-chunked uploads with HTTP 411). An endpoint is a server: a bucket in its path is a configuration error.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from jobs.redact import mask_url

# In the order they count: ours first, then botocore's own (the service's variable before the global one).
ENDPOINT_VARIABLES = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def configured_endpoint(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Given the environment, return (variable, URL) of the S3 endpoint it names, or None for AWS S3 itself.

    botocore's variables count unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true, as botocore itself decides."""
    ignore_aws = env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true"
    for variable in ENDPOINT_VARIABLES:
        value = env.get(variable, "").strip()
        if value and not (ignore_aws and variable != "S3_ENDPOINT_URL"):
            return variable, value
    return None


def endpoint_problem(variable: str, url: str) -> str | None:
    """Return the sentence that says what is wrong with the endpoint `url` given in `variable`, or None."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or not url.startswith(("http://", "https://")) or not host:
        return f"{variable}={mask_url(url)!r} must be a URL like https://host[:port]"
    if parts.path.strip("/"):
        return (f"{variable}={mask_url(url)!r} has the path {parts.path!r}: the endpoint is the server only "
                f"(https://host[:port]); put the bucket name in S3_BUCKET and a key prefix in S3_PREFIX")
    return None
