"""Real local HTTP receivers for webhooks and pings: one that answers, one that refuses connections (nothing
listens), and one that accepts connections and never answers."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import socket
import threading
import time
from typing import Any

import pytest


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers with `statuses` in turn (then 200)."""

    server: ThreadingHTTPServer
    statuses: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 20) -> list[Request]:
        """Return the requests once there are at least `count`; fail after `timeout` seconds."""
        with self.changed:
            self.changed.wait_for(lambda: len(self.requests) >= count, timeout)
            assert len(self.requests) >= count, f"{len(self.requests)} requests, wanted {count}: {self.requests}"
            return list(self.requests)

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]


def _handler(receiver: "Receiver") -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with receiver.changed:
                receiver.requests.append(Request(self.command, self.path, dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.changed.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_POST = do_GET = do_HEAD = _record

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    found = Receiver(server)
    server.RequestHandlerClass = _handler(found)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def refusing_url() -> str:
    """A URL where nothing listens: every connection is refused."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class Hanging:
    """Accepts connections and never answers; counts the connections."""

    sock: socket.socket
    connections: list[socket.socket] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.connections) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.connections) >= count


@pytest.fixture
def hanging() -> Iterator[Hanging]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    found = Hanging(sock)

    def accept() -> None:
        while True:
            try:
                connection, _ = sock.accept()
            except OSError:
                return
            found.connections.append(connection)

    threading.Thread(target=accept, daemon=True).start()
    yield found
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
    except OSError:
        pass
    sock.close()
    for connection in found.connections:
        connection.close()
