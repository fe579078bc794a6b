"""Real redis-server processes for the Redis tests: each on a free port in its own directory, configured through
a 0600 file (so passwords never reach a command line), stopped and waited for afterwards."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
import os
from pathlib import Path
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import redis

from jobs.engines.redis import RedisSource

PASSWORD = "s3cr3t-Pa55word-9f1c"  # recognisable in any output or command line
ADMIN = "admin-Pa55word-77aa"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A running redis-server and how to reach it as the administrator."""

    process: subprocess.Popen
    port: int
    directory: Path
    password: str | None
    tls: bool = False

    def client(self, db: int = 0, **options: Any) -> redis.Redis:
        options.setdefault("socket_timeout", 30)
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.directory / "ca.crt"))
        return redis.Redis(host="127.0.0.1" if not self.tls else "localhost", port=self.port, db=db,
                           password=self.password, **options)

    def url(self, credentials: str = "", query: str = "") -> str:
        scheme, host = ("rediss", "localhost") if self.tls else ("redis", "127.0.0.1")
        return f"{scheme}://{credentials}{host}:{self.port}" + (f"?{query}" if query else "")

    def kill(self) -> None:
        """SIGKILL the server and any child it forked for a snapshot."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


def _wait_ready(server: Server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            log = (server.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server exited with {server.process.returncode}: {log}")
        try:
            if server.client(socket_timeout=1).ping():
                return
        except redis.BusyLoadingError:
            pass
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {server.port} did not answer in {timeout} s")
        time.sleep(0.05)


@contextmanager
def redis_server(directory: Path, *, password: str | None = None, diskless: bool = True, config: list[str] = (),
                 tls_files: Path | None = None) -> Iterator[Server]:
    """Run a redis-server in `directory` (loading its dump.rdb, if any) until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [f"dir {directory}", "bind 127.0.0.1", "save \"\"", "appendonly no", "dbfilename dump.rdb",
             f"logfile {directory / 'redis.log'}", f"repl-diskless-sync {'yes' if diskless else 'no'}",
             "repl-diskless-sync-delay 0", "enable-debug-command local", "databases 16"]
    if tls_files is not None:
        for name in ("ca.crt", "server.crt", "server.key"):
            shutil.copy(tls_files / name, directory / name)
        lines += ["port 0", f"tls-port {port}", f"tls-cert-file {directory / 'server.crt'}",
                  f"tls-key-file {directory / 'server.key'}", f"tls-ca-cert-file {directory / 'ca.crt'}", "tls-auth-clients no"]
    else:
        lines.append(f"port {port}")
    if password:
        lines.append(f"requirepass {password}")
    lines += list(config)
    conf = directory / "redis.conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o600)
    process = subprocess.Popen(["redis-server", str(conf)], cwd=directory, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(process, port, directory, password, tls=tls_files is not None)
    try:
        _wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # a snapshot child the server left behind
        except ProcessLookupError:
            pass


def fill(server: Server) -> None:
    """Write every common data type into databases 0 and 1, some keys with a TTL."""
    zero, one = server.client(0), server.client(1)
    zero.set("greeting", "hello")
    zero.set("counter", 42)
    zero.set("binary", bytes(range(256)))
    zero.set("big", b"x" * 200_000)
    zero.set("session:1", "alive", ex=3600)
    zero.rpush("queue", *[f"job-{i}" for i in range(300)])
    zero.hset("user:1", mapping={"name": "Ada", "email": "ada@example.com", "age": "36"})
    zero.hset("wide", mapping={f"f{i}": f"v{i}" * 20 for i in range(1000)})
    zero.sadd("tags", "a", "b", "c")
    zero.sadd("numbers", *range(100))
    zero.zadd("scores", {"alice": 1.5, "bob": 2.25, "carol": -3})
    zero.xadd("events", {"kind": "signup", "user": "1"})
    zero.xadd("events", {"kind": "login", "user": "1"})
    one.set("other-db", "yes")
    one.rpush("sidekiq:queue:default", *[f'{{"jid":"{i}"}}' for i in range(50)])
    one.hset("sidekiq:stats", mapping={"processed": "1000", "failed": "3"})


def contents(client: redis.Redis) -> dict[bytes, Any]:
    """Return every key of the client's database with its type and value, comparable across servers."""
    found: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = client.dump(key)
        found[key] = (kind, value, client.ttl(key) > 0)
    return found


def everything(server: Server) -> dict[int, dict[bytes, Any]]:
    """Return the contents of databases 0 and 1."""
    return {db: contents(server.client(db)) for db in (0, 1)}


@dataclass
class Taken:
    """What the tiny pipeline stand-in produced."""

    path: Path
    verified: str
    size: int | None
    details: dict[str, Any]
    raw_size: int


def take(source: RedisSource, out: Path, cancel: threading.Event | None = None, chunk_size: int = 1 << 20,
         on_chunk: Any = None) -> Taken:
    """Do what the pipeline does with a Snapshot: read chunks, feed the check, write a temporary file, finish,
    and only then rename it to `out`; remove the temporary file on any error."""
    cancel = cancel or threading.Event()
    partial = out.with_name(out.name + ".tmp")
    try:
        with source.snapshot(out.parent, cancel) as snap, partial.open("wb") as file:
            try:
                written = 0
                while chunk := snap.stream.read(chunk_size):
                    snap.check.feed(chunk)
                    file.write(chunk)
                    written += len(chunk)
                    if on_chunk is not None:
                        on_chunk(written)
                verified = snap.check.finish()
            finally:
                snap.check.close()
        partial.rename(out)
        return Taken(out, verified, snap.size, snap.details, written)
    finally:
        partial.unlink(missing_ok=True)


def load_into_fresh_server(rdb_file: Path, directory: Path) -> Any:
    """Copy `rdb_file` as dump.rdb into a new server directory; return a context manager running that server."""
    directory.mkdir(parents=True)
    shutil.copy(rdb_file, directory / "dump.rdb")
    return redis_server(directory)


def command_lines() -> list[str]:
    """Return the command line of every process on the machine we may read."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return lines


def make_tls_files(directory: Path) -> Path:
    """Create a CA and a server certificate for `localhost` (and 127.0.0.1) signed by it, with openssl."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=backup-worker test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return directory
