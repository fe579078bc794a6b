"""A Redis connection at the byte level: connect (TCP or TLS), RESP2 commands, then raw reads for SYNC.

The SYNC payload is not a RESP reply a client library can hand us piece by piece, so the whole conversation
(AUTH, INFO, REPLCONF, SYNC) goes over one plain socket. Every blocking step waits at most POLL_S before it
looks at the cancel flag again, so a stop request is honoured within about half a second.
"""

from dataclasses import dataclass
import errno
import os
import select
import socket
import ssl
import threading
import time

from jobs.errors import Cancelled, SourceError

POLL_S = 0.5
CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 30.0  # a command's reply, or the silence allowed between bytes of a transfer (see idle_limit)
_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY, errno.EINTR}


class ServerError(Exception):
    """The server answered a command with an error reply (`-ERR …`, `-NOPERM …`); the text is the reply."""


class Closed(SourceError):
    """The server closed the connection."""


@dataclass(frozen=True)
class Tls:
    """TLS settings for rediss:// : verify the server's certificate (default) against `ca_file` or the system's."""

    verify: bool = True
    ca_file: str | None = None


def _cancelled(cancel: threading.Event, what: str) -> None:
    if cancel.is_set():
        raise Cancelled(f"the worker is stopping; {what} was interrupted")


def _tcp(host: str, port: int, cancel: threading.Event) -> socket.socket:
    """Return a connected TCP socket to host:port (every address tried in turn). Raise SourceError or Cancelled."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise SourceError(f"cannot resolve the Redis host {host!r} ({error.strerror}); check the host name in the source URL") from None
    last = errno.ETIMEDOUT
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while code in _IN_PROGRESS:
                _cancelled(cancel, "connecting to Redis")
                if select.select([], [sock], [], POLL_S)[1]:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                elif time.monotonic() > deadline:
                    code = errno.ETIMEDOUT
        except BaseException:
            sock.close()
            raise
        if code == 0:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        sock.close()
        last = code
    raise SourceError(f"cannot connect to the Redis server at {host}:{port} ({os.strerror(last)}); "
                      "check the host and port in the source URL and that the server is running")


def _tls(sock: socket.socket, host: str, port: int, tls: Tls, cancel: threading.Event) -> ssl.SSLSocket:
    """Return `sock` wrapped in TLS after a handshake that checks `cancel`. Raise SourceError or Cancelled."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    wrapped = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    try:
        while True:
            _cancelled(cancel, "the TLS handshake with Redis")
            if time.monotonic() > deadline:
                raise SourceError(f"the TLS handshake with {host}:{port} timed out; check that the server speaks TLS on this port, or use redis:// for a plain one")
            try:
                wrapped.do_handshake()
                return wrapped
            except ssl.SSLWantReadError:
                select.select([wrapped], [], [], POLL_S)
            except ssl.SSLWantWriteError:
                select.select([], [wrapped], [], POLL_S)
    except ssl.SSLCertVerificationError as error:
        wrapped.close()
        raise SourceError(f"the TLS certificate of {host}:{port} could not be verified ({error.verify_message}); "
                          "add ssl_ca_certs=/path/to/ca.pem to the source URL, or ssl_cert_reqs=none to accept any certificate") from None
    except (ssl.SSLError, OSError) as error:
        wrapped.close()
        raise SourceError(f"the TLS handshake with {host}:{port} failed ({getattr(error, 'reason', None) or error}); "
                          "check that the server speaks TLS on this port, or use redis:// for a plain one") from None
    except BaseException:
        wrapped.close()
        raise


class Wire:
    """One connection: RESP2 commands and replies, then raw reads of the SYNC payload."""

    def __init__(self, sock: socket.socket, cancel: threading.Event, where: str) -> None:
        self.sock = sock
        self.cancel = cancel
        self.where = where  # host:port, for messages
        self.idle_limit = REPLY_TIMEOUT_S  # the longest silence tolerated before the server counts as gone
        self._buffer = bytearray()
        sock.settimeout(POLL_S)

    @classmethod
    def open(cls, host: str, port: int, tls: Tls | None, cancel: threading.Event) -> "Wire":
        """Connect to host:port, over TLS when `tls` is given. Raise SourceError or Cancelled."""
        sock = _tcp(host, port, cancel)
        if tls is not None:
            sock = _tls(sock, host, port, tls, cancel)
        return cls(sock, cancel, f"{host}:{port}")

    def close(self) -> None:
        """Close the connection now; idempotent."""
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, *args: str) -> None:
        """Send one command as a RESP array of bulk strings."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
        try:
            self.sock.sendall(b"".join(parts))
        except OSError as error:
            raise Closed(f"the connection to the Redis server at {self.where} was lost ({error.strerror or error}); try again") from None

    def command(self, *args: str) -> object:
        """Send a command and return its reply (str, int, bytes, list or None). Raise ServerError for `-…` replies."""
        self.send(*args)
        return self.reply()

    def reply(self) -> object:
        """Read one RESP2 reply."""
        line = self.readline()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode(errors="replace")
        if kind == b"-":
            raise ServerError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.read_exact(size + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise SourceError(f"the server at {self.where} does not speak the Redis protocol (it sent {line[:40]!r}); check the port")

    def readline(self) -> bytes:
        """Return the next line without its line end (`\\r\\n` or `\\n`)."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > 64 << 10:
                raise SourceError(f"the server at {self.where} sent a line longer than 64 KiB; check that it is a Redis server")
            self._buffer += self._recv(64 << 10)
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def read_exact(self, size: int) -> bytes:
        """Return exactly `size` bytes."""
        while len(self._buffer) < size:
            self._buffer += self._recv(max(size - len(self._buffer), 64 << 10))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_some(self, limit: int) -> bytes:
        """Return between 1 and `limit` bytes: what is buffered first, else one receive."""
        if self._buffer:
            data = bytes(self._buffer[:limit])
            del self._buffer[:limit]
            return data
        return self._recv(limit)

    def _recv(self, limit: int) -> bytes:
        """Receive up to `limit` bytes, waiting in POLL_S steps. Raise Closed, SourceError or Cancelled."""
        deadline = time.monotonic() + self.idle_limit
        while True:
            _cancelled(self.cancel, "the Redis snapshot")
            try:
                data = self.sock.recv(limit)
            except (TimeoutError, ssl.SSLWantReadError):
                if time.monotonic() > deadline:
                    raise SourceError(f"the Redis server at {self.where} sent nothing for {self.idle_limit:g} s; "
                                      "check its load and log, and try again") from None
                continue
            except OSError as error:
                raise Closed(f"the connection to the Redis server at {self.where} was lost ({error.strerror or error}); "
                             "check the server's log and try again") from None
            if not data:
                raise Closed(f"the Redis server at {self.where} closed the connection; check its log and try again")
            return data
