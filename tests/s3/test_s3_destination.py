"""What only the S3 destination does: prefixes, multipart, confirmation, retries, outages and clear, secret-free errors."""

from collections.abc import Callable
import hashlib
import os
from pathlib import Path
import threading
import time
from typing import Any

from boto3.s3.transfer import TransferConfig
import pytest

from jobs.destinations.s3 import Retry, S3Destination, make_client
from jobs.errors import Cancelled, DownloadError, ListError, UploadError
from .conftest import ACCESS_KEY, SECRET, FlakyProxy, free_port

ARTIFACT = "app-20260101T020000Z.sqlite.zst"
MIB = 1 << 20
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=2)

MakeS3 = Callable[..., S3Destination]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def assert_no_secrets(message: str) -> None:
    assert SECRET not in message
    assert ACCESS_KEY not in message
    assert "X-Amz-Signature" not in message and "Authorization" not in message


def bucket_keys(s3_client: Any, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_objects_are_stored_under_the_prefix_and_listed_relative_to_it(make_s3: MakeS3, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    destination = make_s3(prefix="/nightly/app/")
    destination.put(write(tmp_path / "a", b"abc"), ARTIFACT, threading.Event())
    s3_client.put_object(Bucket=bucket, Key="nightly/app/older/inner.zst", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="nightly/other.zst", Body=b"x")
    s3_client.put_object(Bucket=bucket, Key="elsewhere.zst", Body=b"x")
    assert bucket_keys(s3_client, bucket) == ["elsewhere.zst", f"nightly/app/{ARTIFACT}", "nightly/app/older/inner.zst", "nightly/other.zst"]
    assert [(entry.key, entry.size) for entry in destination.list()] == [(ARTIFACT, 3)]
    assert destination.read(ARTIFACT) == b"abc"


def test_without_a_prefix_objects_sit_at_the_bucket_root(make_s3: MakeS3, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    destination = make_s3(prefix="")
    destination.put(write(tmp_path / "a", b"abc"), ARTIFACT, threading.Event())
    s3_client.put_object(Bucket=bucket, Key="folder/x.zst", Body=b"x")
    assert bucket_keys(s3_client, bucket) == [ARTIFACT, "folder/x.zst"]
    assert [entry.key for entry in destination.list()] == [ARTIFACT]


def test_put_records_the_sha256_as_object_metadata(make_s3: MakeS3, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(1000)
    make_s3().put(write(tmp_path / "a", data), ARTIFACT, threading.Event())
    head = s3_client.head_object(Bucket=bucket, Key=ARTIFACT)
    assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert head["ContentType"] == "application/zstd"


def test_a_multipart_upload_round_trips_byte_identical(make_s3: MakeS3, s3_client: Any, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(12 * MIB + 123)
    destination = make_s3(transfer=SMALL_PARTS)
    destination.put(write(tmp_path / "big", data), ARTIFACT, threading.Event())
    assert s3_client.head_object(Bucket=bucket, Key=ARTIFACT)["ETag"].strip('"').endswith("-3")
    destination.get(ARTIFACT, tmp_path / "back", threading.Event())
    assert hashlib.sha256((tmp_path / "back").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_multipart_upload_cancelled_mid_transfer_leaves_no_object_and_no_open_upload(
    make_s3: MakeS3, s3_client: Any, bucket: str, tmp_path: Path, tripwire: Any
) -> None:
    source = write(tmp_path / "big", os.urandom(12 * MIB))
    hashing_checks = 12 + 1  # one per MiB hashed, one before the transfer starts
    cancel = tripwire(after=hashing_checks + 20)
    with pytest.raises(Cancelled):
        make_s3(transfer=SMALL_PARTS).put(source, ARTIFACT, cancel)
    assert cancel.checks > hashing_checks + 20
    assert bucket_keys(s3_client, bucket) == []
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("operation, error, stage", [("put", UploadError, "upload"), ("get", DownloadError, "download"),
                                                     ("read", DownloadError, "download"), ("list", ListError, "list"),
                                                     ("delete", UploadError, "upload")])
def test_an_outage_raises_the_operation_s_error_quickly_with_a_clear_secret_free_message(
    make_s3: MakeS3, client_for: Callable[..., Any], tmp_path: Path, operation: str, error: type, stage: str
) -> None:
    endpoint = closed_endpoint()
    destination = make_s3(endpoint=endpoint, client=client_for(endpoint, max_attempts=1),
                          retry=Retry(attempts=3, first_delay=0.01, max_delay=0.02))
    calls = {
        "put": lambda: destination.put(write(tmp_path / "a", b"abc"), ARTIFACT, threading.Event()),
        "get": lambda: destination.get(ARTIFACT, tmp_path / "out", threading.Event()),
        "read": lambda: destination.read(ARTIFACT),
        "list": destination.list,
        "delete": lambda: destination.delete(ARTIFACT),
    }
    started = time.monotonic()
    with pytest.raises(error) as raised:
        calls[operation]()
    assert time.monotonic() - started < 5
    assert raised.value.stage == stage and raised.value.cause == "connection refused"
    message = str(raised.value)
    assert f"cannot reach the S3 endpoint {endpoint}" in message
    assert "after 3 attempts (connection refused)" in message
    assert "check S3_ENDPOINT_URL" in message
    assert destination.bucket in message
    assert "local backup" not in message  # the pipeline, which knows what happens to it, says so
    assert_no_secrets(message)
    assert not (tmp_path / "out").exists()


def test_an_endpoint_url_with_credentials_is_masked_in_messages(make_s3: MakeS3, client_for: Callable[..., Any]) -> None:
    port = free_port()
    endpoint = f"http://user:{SECRET}@127.0.0.1:{port}"
    destination = make_s3(endpoint=endpoint, client=client_for(f"http://127.0.0.1:{port}", max_attempts=1),
                          retry=Retry(attempts=1))
    with pytest.raises(ListError) as raised:
        destination.list()
    assert "http://user:***@127.0.0.1" in str(raised.value)
    assert_no_secrets(str(raised.value))


def test_a_missing_bucket_fails_at_once_without_retrying(make_s3: MakeS3, flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    destination = make_s3(endpoint=flaky_proxy.url, bucket_name="no-such-bucket-here", retry=Retry(attempts=5, first_delay=30))
    started = time.monotonic()
    with pytest.raises(UploadError) as raised:
        destination.put(write(tmp_path / "a", b"abc"), ARTIFACT, threading.Event())
    assert time.monotonic() - started < 5
    assert len(flaky_proxy.requests) == 1
    assert str(raised.value).startswith("the bucket no-such-bucket-here does not exist")
    assert "S3_BUCKET" in str(raised.value)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (403, "InvalidAccessKeyId", "rejected our credentials for s3://"),
        (403, "SignatureDoesNotMatch", "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        (403, "AccessDenied", "was denied (AccessDenied, HTTP 403); grant the key"),
    ],
)
def test_refused_credentials_fail_at_once_and_say_what_to_fix(
    make_s3: MakeS3, flaky_proxy: FlakyProxy, tmp_path: Path, status: int, code: str, expected: str
) -> None:
    flaky_proxy.fail, flaky_proxy.fail_status, flaky_proxy.fail_code = 100, status, code
    destination = make_s3(prefix="app", endpoint=flaky_proxy.url, retry=Retry(attempts=5, first_delay=30))
    started = time.monotonic()
    with pytest.raises(UploadError) as raised:
        destination.put(write(tmp_path / "a", b"abc"), ARTIFACT, threading.Event())
    assert time.monotonic() - started < 5
    assert len(flaky_proxy.requests) == 1
    assert expected in str(raised.value)
    assert_no_secrets(str(raised.value))


@pytest.fixture
def flaky_s3(make_s3: MakeS3, client_for: Callable[..., Any], flaky_proxy: FlakyProxy) -> Callable[..., S3Destination]:
    """Return a factory of S3Destinations through the proxy; with botocore retries off (the default here), only our
    own retry can save a request."""

    def build(botocore_attempts: int = 1, **options: Any) -> S3Destination:
        options.setdefault("retry", Retry(attempts=5, first_delay=0.01, max_delay=0.05))
        client = client_for(flaky_proxy.url, max_attempts=botocore_attempts)
        return make_s3(prefix="app", endpoint=flaky_proxy.url, client=client, **options)

    return build


def test_an_upload_is_retried_through_503_slow_down_and_succeeds(bucket: str, flaky_s3: Callable[..., S3Destination], flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    destination = flaky_s3()
    flaky_proxy.fail = 3
    destination.put(write(tmp_path / "a", b"payload"), ARTIFACT, threading.Event())
    assert flaky_proxy.fail == 0
    assert destination.read(ARTIFACT) == b"payload"


def test_a_multipart_upload_survives_a_failed_part(bucket: str, flaky_s3: Callable[..., S3Destination], flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    data = os.urandom(11 * MIB)
    destination = flaky_s3(botocore_attempts=3, transfer=SMALL_PARTS)
    flaky_proxy.fail, flaky_proxy.fail_methods = 2, {"PUT"}
    destination.put(write(tmp_path / "big", data), ARTIFACT, threading.Event())
    assert flaky_proxy.fail == 0
    destination.get(ARTIFACT, tmp_path / "back", threading.Event())
    assert (tmp_path / "back").read_bytes() == data


def test_a_download_is_retried_through_503_and_a_response_cut_mid_body(bucket: str, flaky_s3: Callable[..., S3Destination], flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    data = os.urandom(400_000)
    destination = flaky_s3()
    destination.put(write(tmp_path / "a", data), ARTIFACT, threading.Event())
    flaky_proxy.fail, flaky_proxy.cut = 2, 2
    destination.get(ARTIFACT, tmp_path / "back", threading.Event())
    assert (flaky_proxy.fail, flaky_proxy.cut) == (0, 0)
    assert (tmp_path / "back").read_bytes() == data


def test_a_read_cut_mid_body_is_retried_by_our_own_backoff(bucket: str, flaky_s3: Callable[..., S3Destination], flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    destination = flaky_s3()
    destination.put(write(tmp_path / "m", b"{" + b" " * 1000 + b"}"), ARTIFACT + ".json", threading.Event())
    flaky_proxy.cut = 2
    assert destination.read(ARTIFACT + ".json") == b"{" + b" " * 1000 + b"}"
    assert flaky_proxy.cut == 0


def test_a_listing_is_retried_through_503(bucket: str, flaky_s3: Callable[..., S3Destination], flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    destination = flaky_s3()
    destination.put(write(tmp_path / "a", b"abc"), ARTIFACT, threading.Event())
    flaky_proxy.fail = 4
    assert [entry.key for entry in destination.list()] == [ARTIFACT]


def test_a_persistent_503_gives_up_after_the_configured_attempts(bucket: str, flaky_s3: Callable[..., S3Destination], flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    destination = flaky_s3()
    flaky_proxy.fail = 1000
    before = len(flaky_proxy.requests)
    with pytest.raises(ListError) as raised:
        destination.list()
    assert len(flaky_proxy.requests) - before == 5
    message = str(raised.value)
    assert f"kept failing to list s3://{bucket}/app after 5 attempts (SlowDown, HTTP 503)" in message
    assert_no_secrets(message)


def test_a_cancel_between_retries_stops_the_wait(bucket: str, flaky_s3: Callable[..., S3Destination], flaky_proxy: FlakyProxy, tmp_path: Path) -> None:
    destination = flaky_s3(retry=Retry(attempts=5, first_delay=30, max_delay=30))
    flaky_proxy.fail = 1000
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        destination.put(write(tmp_path / "a", b"abc"), ARTIFACT, cancel)
    assert time.monotonic() - started < 5


def test_missing_credentials_are_named_without_contacting_anyone(
    make_s3: MakeS3, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    destination = make_s3(client=make_client(moto_endpoint, "us-east-1"))
    with pytest.raises(ListError, match="no AWS credentials were found to list s3://.*; set AWS_ACCESS_KEY_ID"):
        destination.list()


def test_checksum_headers_are_kept_for_aws_and_sent_only_when_required_to_other_endpoints() -> None:
    from jobs.destinations.s3 import make_client

    aws = make_client(None, "us-east-1").meta.config
    other = make_client("https://account.r2.cloudflarestorage.com", "auto").meta.config
    assert (aws.request_checksum_calculation, aws.response_checksum_validation) == ("when_supported", "when_supported")
    assert (other.request_checksum_calculation, other.response_checksum_validation) == ("when_required", "when_required")
    assert other.s3["addressing_style"] == "path"


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_an_endpoint_that_botocore_reads_itself_gets_the_s3_compatible_client_too(monkeypatch: pytest.MonkeyPatch,
                                                                                  variable: str) -> None:
    monkeypatch.setenv(variable, "https://rgw.example.com:7480")
    config = make_client(None, "us-east-1").meta
    assert config.endpoint_url == "https://rgw.example.com:7480"
    assert (config.config.request_checksum_calculation, config.config.response_checksum_validation) == ("when_required", "when_required")
    assert config.config.s3["addressing_style"] == "path"
