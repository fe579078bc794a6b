"""Redis: an RDB snapshot taken over the replication protocol, as `redis-cli --rdb` does.

We connect like a replica (AUTH, `REPLCONF capa eof`, `REPLCONF rdb-only 1`, `SYNC`) and the server forks and
streams a point-in-time RDB of every database to us: sized (`$<len>` then the file, written first on the
server's disk) or diskless (`$EOF:<40-byte mark>`, the file, the mark; Redis 7's default). Nothing depends on
the server's own disk or on BGSAVE, so it works against a server on another host (Railway's Redis, TLS with
rediss://). `rdb-only` tells Redis 7+ we want the file and no command stream, so it buffers nothing for us;
the connection is closed right after the payload. The password goes only into the AUTH command on the socket.
"""

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
import io
from pathlib import Path
import threading
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from jobs.engines import InServer, Snapshot, rdb
from jobs.engines.rdb import RdbCheck
from jobs.engines.redis_wire import Closed, ServerError, Tls, Wire
from jobs.errors import SourceError
from jobs.redact import ambiguous_userinfo, mask_url, split_url

SCHEMES = ("redis", "rediss")
KIND = "rdb"
URL_TARGET = False
# Why a Redis backup is not restored over the live server: said before anything is fetched (Source.restore_refusal).
REFUSAL = ("a Redis backup is not loaded into a running server by the worker; write the RDB file with "
           "`restore --to PATH` (e.g. --to /tmp/restore/dump.rdb) and load it as docs/redis.md (linked from the README) says: "
           "stop the server, put the file in place as its dump.rdb and start it, or let the server copy it from "
           "a temporary redis-server as a replica (on Railway)")
DEFAULT_PORT = 6379
SYNC_IDLE_S = 60.0  # silence tolerated while the server prepares (it sends a newline every second) or streams
MARK_SIZE = 40
_IGNORED_QUERY = {"family", "db", "protocol"}  # client settings from app URLs that mean nothing for a snapshot
_CERT_REQS = {"none": False, "optional": True, "required": True}


class SyncStream(io.RawIOBase):
    """The SYNC payload as a file: `size` bytes, or everything up to the 40-byte end mark (never included).

    Reads return b"" only once the whole payload arrived; the connection is closed at that moment. A connection
    lost earlier raises SourceError from read().
    """

    def __init__(self, wire: Wire, size: int | None, mark: bytes | None) -> None:
        super().__init__()
        self.wire = wire
        self.remaining = size
        self.mark = mark
        self.received = 0
        self._pending = bytearray()  # diskless form: bytes received, the last 40 held back until no mark follows
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not len(view):
            return 0
        try:
            return self._readinto(view)
        except Closed:
            self.wire.close()
            raise SourceError(f"the Redis server at {self.wire.where} closed the connection after {self.received} bytes "
                              "of the snapshot; the incomplete snapshot is discarded: check the server's log (restart, out of memory, "
                              "client-output-buffer-limit) and try again") from None

    def _readinto(self, view: memoryview) -> int:
        if self.mark is None:
            if not self.remaining:
                self._end()
                return 0
            data = self.wire.read_some(min(len(view), self.remaining))
            view[:len(data)] = data
            self.remaining -= len(data)
            self.received += len(data)
            if not self.remaining:
                self._end()
            return len(data)
        while True:
            hold = 0 if self._ended else MARK_SIZE
            if len(self._pending) > hold:
                count = min(len(view), len(self._pending) - hold)
                view[:count] = self._pending[:count]
                del self._pending[:count]
                return count
            if self._ended:
                return 0
            data = self.wire.read_some(max(len(view), 1 << 16))
            self.received += len(data)
            self._pending += data
            if self._pending.endswith(self.mark):  # as Redis's replica does: the mark ends the last read
                del self._pending[-MARK_SIZE:]
                self.received -= MARK_SIZE
                self._end()

    def _end(self) -> None:
        self._ended = True
        self.wire.close()  # we are not a real replica: hang up as soon as we have the file

    def close(self) -> None:
        self.wire.close()
        super().close()


def _refusal(error: ServerError, source: "RedisSource", command: str) -> SourceError:
    """Turn an error reply into a SourceError a user can act on (never quoting a password)."""
    text = str(error)
    code = text.split(" ", 1)[0]
    where = source.where
    if code == "NOAUTH":
        return SourceError(f"the Redis server at {where} requires a password; put it in the source URL as redis://default:PASSWORD@{where}")
    if code == "WRONGPASS" or "invalid password" in text or "invalid username-password" in text:
        who = f"user {source.username!r} and password" if source.username not in (None, "default") else "password"
        return SourceError(f"the Redis server at {where} rejected the {who} in the source URL; check the credentials (on Railway, copy REDIS_URL from the Redis service)")
    if code == "NOPERM" and command in ("SYNC", "PSYNC"):
        user = source.username or "default"
        return SourceError(f"the Redis user {user!r} may not run SYNC, so no snapshot can be taken over replication; "
                           f"grant it with `ACL SETUSER {user} +sync +psync +replconf +info` or use an admin user")
    if command == "SYNC" and ((code == "ERR" and "unknown command" in text) or "disabled" in text or "not allowed" in text):
        return SourceError(f"the Redis server at {where} does not allow replication (SYNC is disabled or renamed, as some managed "
                           "services do), so it cannot be backed up over the network; use the provider's own backups, or a server you control")
    if code == "LOADING":
        return SourceError(f"the Redis server at {where} is still loading its data into memory; try again when it has finished")
    if code == "DENIED":
        return SourceError(f"the Redis server at {where} refuses remote clients (protected mode); set a password with requirepass and use it in the source URL")
    if code == "MASTERDOWN" or "not connected with my master" in text:
        return SourceError(f"the Redis server at {where} is a replica whose master is down; back up the master or wait until the replica is in sync")
    return SourceError(f"the Redis server at {where} refused {command}: {text[:200]}; check the server's log and configuration")


def parse_info(text: str) -> dict[str, str]:
    """Given INFO's reply, return its `field:value` lines as a dict."""
    fields = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            fields[key] = value.strip()
    return fields


def keyspace(info: dict[str, str], field: str = "keys") -> dict[str, int]:
    """Given INFO keyspace fields (`db0: keys=3,expires=0,…`), return the key count of each database (with
    `field="expires"`, the count of its keys with a TTL)."""
    counts = {}
    for name, value in info.items():
        if name.startswith("db") and name[2:].isdigit():
            pairs = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
            if pairs.get(field, "").isdigit():
                counts[name] = int(pairs[field])
    return counts


@dataclass
class RedisSource(InServer):
    """A Redis (or Valkey) server; the snapshot holds every database."""

    host: str
    port: int
    url: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: Tls | None = None
    kind: str = KIND
    set_name: str | None = field(default=None, kw_only=True)  # BACKUP_NAME or BACKUP_SOURCE_<NAME>, else `redis`
    snapshot_on_disk: bool = field(default=False, init=False, repr=False)  # the SYNC payload streams through
    safety_backup: bool = field(default=False, init=False, repr=False)  # never restored over: nothing to keep
    _versions: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def where(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def name(self) -> str:
        return self.set_name or "redis"

    def describe(self) -> dict[str, str]:
        return {"kind": KIND, "database": "redis", "host": self.where}

    def target(self) -> str:
        return mask_url(self.url)

    def identity(self) -> dict[str, str]:
        return {"host": self.host, "port": str(self.port)}

    def protected_files(self) -> list[Path]:
        return []

    def missing(self) -> str | None:
        """Return None: a Redis server's keys are never restored at start; its RDB is loaded by hand (README)."""
        return None

    def sql_database(self) -> None:
        return None

    def has_rows(self) -> bool:
        """Return whether any database of the server holds a key (INFO keyspace, else DBSIZE of database 0); a
        user who may run neither is answered True (nothing tells us the server is empty)."""
        with self.session(threading.Event()) as wire:
            for command in (("INFO", "keyspace"), ("DBSIZE",)):
                try:
                    reply = wire.command(*command)
                except ServerError:
                    continue
                if isinstance(reply, bytes):
                    return sum(keyspace(parse_info(reply.decode(errors="replace"))).values()) > 0
                return not isinstance(reply, int) or reply > 0
        return True

    @contextmanager
    def session(self, cancel: threading.Event) -> Iterator[Wire]:
        """Yield an authenticated connection, closed on exit. Raise SourceError (unreachable, credentials, a
        server that hangs up at once) or Cancelled."""
        wire = Wire.open(self.host, self.port, self.tls, cancel)
        try:
            if self.password is not None:
                plain = not self.username or self.username == "default"  # also works on servers older than Redis 6
                try:
                    wire.command(*(["AUTH", self.password] if plain else ["AUTH", self.username, self.password]))
                except ServerError as error:
                    if "without any password configured" not in str(error):  # a password the server does not need
                        raise _refusal(error, self, "AUTH") from None
            yield wire
        except Closed:
            scheme, does = ("redis", "does not speak") if self.tls else ("rediss", "expects")
            raise SourceError(f"the server at {self.where} hung up before answering; check the port, and use {scheme}:// if it {does} TLS") from None
        finally:
            wire.close()

    def info(self, wire: Wire, section: str) -> dict[str, str]:
        """Return the INFO `section` fields, or {} when this user may not run INFO. Raise SourceError otherwise."""
        try:
            reply = wire.command("INFO", section)
        except ServerError as error:
            if str(error).startswith(("NOPERM", "ERR unknown command")):
                return {}
            raise _refusal(error, self, "INFO") from None
        return parse_info(reply.decode(errors="replace") if isinstance(reply, bytes) else "")

    def _remember(self, server: dict[str, str]) -> dict[str, str]:
        if "redis_version" in server:
            name = server.get("server_name", "redis")
            version = server.get(f"{name}_version", server["redis_version"])
            self._versions.clear()
            self._versions.update({"server": version} if name == "redis" else {"server": f"{name} {version}"})
        return dict(self._versions)

    def estimate_size(self) -> int:
        """Return the server's dataset size in memory, an upper bound of the RDB's size (0 when INFO is denied)."""
        with self.session(threading.Event()) as wire:
            self._remember(self.info(wire, "server"))
            memory = self.info(wire, "memory")
        value = memory.get("used_memory_dataset") or memory.get("used_memory") or "0"
        return int(value) if value.isdigit() else 0

    def versions(self) -> dict[str, str]:
        if not self._versions:
            try:
                with self.session(threading.Event()) as wire:
                    self._remember(self.info(wire, "server"))
            except SourceError:
                return {}
        return dict(self._versions)

    @contextmanager
    def snapshot(self, workdir: Path, cancel: threading.Event) -> Iterator[Snapshot]:
        """Yield the SYNC payload as a Snapshot whose check proves the RDB and counts its keys per database; the
        connection is closed on exit."""
        with self.session(cancel) as wire:
            versions = self._remember(self.info(wire, "server"))
            for capability in (("capa", "eof"), ("rdb-only", "1")):
                try:  # optional (old servers, restricted users): without capa eof the server sends the sized form,
                    # without rdb-only it would follow the file with its command stream (we hang up first)
                    wire.command("REPLCONF", *capability)
                except ServerError:
                    pass
            size, mark = self._sync(wire)
            details: dict[str, Any] = {"versions": versions, "rdb": {"transfer": "disk" if mark is None else "diskless"}}
            check = RdbCheck(cancel, details["rdb"], count_keys=True)  # the keys as the file holds them
            stream = SyncStream(wire, size, mark)
            yield Snapshot(stream=stream, check=check, size=size, details=details)

    def _sync(self, wire: Wire) -> tuple[int | None, bytes | None]:
        """Send SYNC and read up to the payload: return (size, None) or (None, end mark)."""
        wire.idle_limit = SYNC_IDLE_S
        wire.send("SYNC")
        try:
            while True:
                line = wire.readline()
                if not line:  # the newline the server sends every second while it forks and saves
                    continue
                if line.startswith(b"-"):
                    raise _refusal(ServerError(line[1:].decode(errors="replace")), self, "SYNC")
                if line.startswith(b"+FULLRESYNC"):
                    continue
                if line.startswith(b"$EOF:") and len(line) >= 5 + MARK_SIZE:
                    return None, bytes(line[5:5 + MARK_SIZE])
                if line.startswith(b"$") and line[1:].isdigit():
                    return int(line[1:]), None
                raise SourceError(f"the Redis server at {self.where} answered SYNC with {line[:40]!r}, not a snapshot; check that it is a Redis server")
        except Closed:
            raise SourceError(f"the Redis server at {self.where} closed the connection before sending the snapshot; "
                              "its log says why (often: the fork for the snapshot failed for lack of memory)") from None

    def problem(self) -> str | None:
        return None  # the backup itself says what is wrong with the server

    def restore_warning(self, versions: Mapping[str, Any]) -> str | None:
        return None

    def restore_refusal(self) -> str | None:
        return REFUSAL

    def restore(self, raw: Path, cancel: threading.Event, notify: Callable[[str], None] | None = None) -> Path | None:
        """Refuse: loading a dataset into a live server is the operator's step (docs/redis.md). Nothing changes."""
        raise SourceError(REFUSAL, stage="restore")


def open_source(url: str, cwd: Path, name: str | None = None) -> RedisSource:
    """Given redis://[user:password@]host[:port][/db] or rediss://… (TLS), return the source.

    Query parameters for rediss://: `ssl_cert_reqs=none` (accept any certificate) and `ssl_ca_certs=PATH` (trust
    this CA file); `family`, `db` and `protocol` (app client settings) are ignored. Raise ValueError if malformed.
    """
    if problem := ambiguous_userinfo(url):  # a host that would be read from part of a password
        raise ValueError(problem)
    split = split_url(url)
    if split is None or split.scheme.lower() not in SCHEMES:
        raise ValueError(f"{mask_url(url)!r} is not a redis:// or rediss:// URL")
    # The user and password as jobs.redact reads them (a "#" or "?" in a password stays in it); urllib reads the rest.
    user, password = split.user(url), split.secret(url)
    parts = urlsplit(f"{split.scheme}://{split.hosts}{split.tail}")
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{mask_url(url)!r} has an invalid port; write redis://[user:password@]host:6379") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - _IGNORED_QUERY - {"ssl_cert_reqs", "ssl_ca_certs"}
    if unknown:
        raise ValueError(f"{mask_url(url)!r} has unknown parameters ({', '.join(sorted(unknown))}); "
                         "rediss:// accepts ssl_cert_reqs=none and ssl_ca_certs=PATH")
    tls = None
    if scheme == "rediss":
        reqs = query.get("ssl_cert_reqs", "required").lower()
        if reqs not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs={reqs} in {mask_url(url)!r} must be none or required")
        ca_file = query.get("ssl_ca_certs") or None
        if ca_file and not Path(ca_file).is_absolute():
            ca_file = str(cwd / ca_file)
        tls = Tls(verify=_CERT_REQS[reqs], ca_file=ca_file)
    elif "ssl_cert_reqs" in query or "ssl_ca_certs" in query:
        raise ValueError(f"{mask_url(url)!r} sets TLS parameters on a plain connection; use rediss://")
    return RedisSource(host=parts.hostname or "localhost", port=port, url=url,
                       username=unquote(user) if user else None,
                       password=unquote(password) if password else None, tls=tls, set_name=name)


checker = rdb.checker

CONFORMANCE = (RedisSource, (RdbCheck,))  # checked against the protocols by jobs.engines.engines()
