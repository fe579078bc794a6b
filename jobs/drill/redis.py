"""A Redis drill: the proven RDB loaded by a private redis-server that the worker starts on a free loopback port,
with no persistence (nothing is saved back), and stops afterwards; its keys are counted per database.

The server runs in the drill's private scratch directory on the backup volume, configured through a 0600 file,
listening on 127.0.0.1 only; it is stopped (SIGTERM, then SIGKILL) when the drill ends, a stop request included.
Keys whose TTL passed since the backup are dropped as the server loads the file (which is why the comparison takes
keys with a TTL as "at most").
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import re
import shutil
import socket
import threading
import time
from typing import Any

import structlog

from jobs import execute
from jobs.backups import Backup
from jobs.engines import Source
from jobs.engines.redis import keyspace, parse_info
from jobs.engines.redis_wire import ServerError, Wire
from jobs.errors import Cancelled, SourceError

KIND = "rdb"
PROGRAM = "redis-server"
LISTEN_S = 30.0  # how long a started server may take to listen (loading the file is waited for as long as it takes)
POLL_S = 0.05
TRIES = 3  # a free port taken by someone else between our look and the server's bind: try another
# `databases` of the private server: an RDB holding db N loads only into a server with more than N databases, and
# a source may be configured with many more than the default 16; unused databases cost a few hundred bytes each.
DATABASES = 10000

log = structlog.get_logger("jobs.drill.redis")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(directory: Path, rdb: Path, port: int) -> Path:
    lines = [f"port {port}", "bind 127.0.0.1", "protected-mode yes", f'dir "{directory}"', f'dbfilename "{rdb.name}"',
             'save ""', "appendonly no", "daemonize no", f'logfile "{directory / "redis.log"}"', f"databases {DATABASES}"]
    config = directory / "redis.conf"
    config.unlink(missing_ok=True)
    return execute.secret_file(directory, "redis.conf", "\n".join(lines) + "\n")


# A redis-server log line: `pid:role date time LEVEL message`, LEVEL `#` for warnings and errors.
_LINE = re.compile(r"^\d+:[A-Z] .+? (?P<level>[.\-*#]) (?P<message>.*)$")


def load_failure(log_text: str) -> str:
    """Given the log of a redis-server that exited, return the one line that says why (its FATAL or error line,
    without the warnings about the host such as memory overcommit), or "" when it says nothing useful."""
    messages = []
    for line in log_text.splitlines():
        match = _LINE.match(line.strip())
        messages.append((match["level"], match["message"]) if match else ("", line.strip()))
    for wanted in (lambda level, text: "FATAL" in text or "Fatal error" in text,
                   lambda level, text: level == "#" and "WARNING" not in text and "error" in text.lower(),
                   lambda level, text: level == "#" and "WARNING" not in text):
        found = [text for level, text in messages if text and wanted(level, text)]
        if found:
            return found[-1].rstrip(".")
    return ""


def _log(directory: Path) -> str:
    try:
        return (directory / "redis.log").read_text(errors="replace")
    except OSError:
        return ""


def _ready(child: execute.Child, port: int, directory: Path, cancel: threading.Event) -> Wire | None:
    """Wait until the server answers PING with its data loaded; return a connection to it, or None when it exited
    because its port was taken. Raise SourceError (it exited, or never listened) or Cancelled."""
    deadline = time.monotonic() + LISTEN_S
    while True:
        if cancel.is_set():
            raise Cancelled("the worker is stopping; the drill's redis-server was stopped")
        code = child.poll()
        if code is not None:
            text = _log(directory)
            if "Address already in use" in text:
                return None
            tail = load_failure(text)
            raise SourceError(f"redis-server could not load the backup's RDB file ({execute.describe_exit(code)}: "
                              f"{tail or child.failure(code)}); the file does not restore with this redis-server",
                              stage="restore")
        wire = None
        try:
            wire = Wire.open("127.0.0.1", port, None, cancel)
            wire.command("PING")
            return wire
        except SourceError:  # not listening yet (or lost: it accepted and then exited on a file it cannot load):
            if wire is not None:    # the loop's next look at the process tells why
                wire.close()
            if time.monotonic() > deadline:
                raise SourceError(f"the drill's redis-server did not answer on 127.0.0.1:{port} within {LISTEN_S:.0f} s",
                                  stage="restore") from None
            time.sleep(POLL_S)
        except ServerError as error:
            wire.close()
            if not str(error).startswith("LOADING"):
                raise SourceError(f"the drill's redis-server answered {str(error)[:200]}", stage="restore") from None
            deadline = time.monotonic() + LISTEN_S  # loading: as long as it takes
            time.sleep(POLL_S)


@contextmanager
def private_server(rdb: Path, cancel: threading.Event) -> Iterator[Wire]:
    """Start a redis-server loading `rdb` (in its directory) on a free loopback port; yield a connection to it
    once the data is loaded; stop the server on exit. Raise SourceError (not installed, it cannot load the file)
    or Cancelled."""
    program = shutil.which(PROGRAM)
    if program is None:
        raise SourceError(f"{PROGRAM} is not installed, so a Redis backup cannot be loaded for its drill; install it "
                          "(apt-get install redis-server; the Dockerfile does)", stage="restore")
    directory = rdb.parent
    for _ in range(TRIES):
        port = free_port()
        config = _config(directory, rdb, port)
        with execute.spawn([program, str(config)], cancel=cancel) as child:
            wire = _ready(child, port, directory, cancel)
            if wire is None:
                continue
            log.info("drill.redis_started", port=port)
            try:
                yield wire
            finally:
                wire.close()
            return
    raise SourceError(f"the drill's redis-server found no free loopback port in {TRIES} tries", stage="restore")


def restore_and_count(raw: Path, backup: Backup, source: Source, operator: object,
                      cancel: threading.Event) -> tuple[list[str], dict[str, Any]]:
    """Load the proven RDB `raw` (in a scratch directory its caller removes) into a private redis-server and
    count its keys per database; the server is stopped on return, whatever happened."""
    with private_server(raw, cancel) as wire:
        reply = wire.command("INFO", "keyspace")
    info = parse_info(reply.decode(errors="replace") if isinstance(reply, bytes) else "")
    keys, ttl = keyspace(info), keyspace(info, "expires")
    databases = {name: {"keys": count, "expires": ttl.get(name, 0)} for name, count in keys.items()}
    return ["loaded by redis-server", "keys counted"], {"unit": "keys", "databases": databases}
