"""The catalog: run history in any SQLAlchemy database (a SQLite file in BACKUP_DIR by default).

The backup files are the truth; the catalog is history and can be lost. So a catalog that fails only warns:
it never fails a backup, and never holds one up: a catalog that another process keeps locked is waited for
`BUSY_S` seconds at most per access (SQLite's busy timeout; on PostgreSQL a lock_timeout and a statement_timeout),
then this write is skipped with a warning.

Each row records the host and pid of the process that runs it. A row still `running` whose process is gone
(killed, crashed, cut off at the stop deadline) is marked `interrupted` when `run` starts again, or when the
next job starts (worker.runs.settle_interrupted, which also notifies it).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
import json
import os
from pathlib import Path
import socket
import threading
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger, Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, func, inspect, select, text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from jobs.manifest import utc_iso
from jobs.engines.postgres import catalog_url
from jobs.files import FILE_MODE, ensure_dir
from jobs.redact import ambiguous_userinfo, mask_url, scrub, scrub_value, url_secrets

log = structlog.get_logger("worker.catalog")

metadata = MetaData()
runs = Table(
    "runs",
    metadata,
    Column("run_id", String(32), primary_key=True),
    Column("job", String(32), nullable=False, index=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", String(16), nullable=False),
    Column("stage", String(32)),
    Column("reason", Text),
    Column("artifact", String(255)),
    Column("size", BigInteger),  # 64-bit: artifacts are often larger than 2 GiB
    Column("raw_size", BigInteger),
    Column("duration_s", Float),
    Column("details", Text),
    Column("host", String(255)),
    Column("pid", Integer),
)

# Runs this process has started and not finished (one process may hold several catalogs; the pid is shared).
_active: set[str] = set()
_active_lock = threading.Lock()
_PROCESS_STARTED = datetime.now(timezone.utc)


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes, which we always wrote in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def catalog_time(moment: datetime | None) -> str | None:
    """Return a catalog time as ISO 8601 UTC (None stays None), for what `status`, `history` and /healthz show."""
    return None if moment is None else utc_iso(_aware(moment))


def _process_started(pid: int) -> datetime | None:
    """Return when process `pid` started (Linux /proc), or None if that cannot be told."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        return datetime.fromtimestamp(boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"), timezone.utc)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def run_is_orphaned(run_id: str, host: str | None, pid: int | None, started_at: datetime) -> bool:
    """Given a `running` row, return whether the process that ran it is certainly gone.

    Rows of another host are never judged. A row with no pid was written by version 1: it is orphaned if it
    started before this process did. A pid that is ours belongs to this life only if the run is active here
    (in a container every life of the worker is pid 1); a live pid that started after the run did was reused.
    """
    if host is None or pid is None:
        return host is None and _aware(started_at) < _PROCESS_STARTED
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        with _active_lock:
            return run_id not in _active
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    began = _process_started(pid)
    return began is not None and began > _aware(started_at) + timedelta(seconds=2)


@dataclass
class Catalog:
    engine: Engine | None
    secrets: list[str] = field(default_factory=list, repr=False)  # scrubbed from every reason and detail written

    def start(self, run_id: str, job: str, started_at: datetime) -> None:
        with _active_lock:
            _active.add(run_id)
        self._write(runs.insert().values(run_id=run_id, job=job, started_at=started_at, outcome="running",
                                         host=socket.gethostname(), pid=os.getpid()))

    def finish(self, run_id: str, outcome: str, duration_s: float, stage: str | None = None,
               reason: str | None = None, fields: dict[str, Any] | None = None) -> None:
        fields = scrub_value(fields or {}, self.secrets)
        reason = scrub(reason, self.secrets) if reason is not None else None
        with _active_lock:
            _active.discard(run_id)
        self._write(
            runs.update().where(runs.c.run_id == run_id).values(
                finished_at=datetime.now(timezone.utc),
                outcome=outcome,
                stage=stage,
                reason=reason,
                artifact=fields.get("artifact"),
                size=fields.get("size"),
                raw_size=fields.get("raw_size"),
                duration_s=duration_s,
                details=json.dumps(fields, default=str),
            )
        )

    def mark_interrupted(self) -> list[dict[str, Any]]:
        """Mark every `running` row whose process is gone as `interrupted`; return those this call changed (each
        with `run_id`, `job`, `started_at`, `reason`). A row another process marked first is not returned, so each
        interrupted run is reported by exactly one process, once."""
        if self.engine is None:
            return []
        query = select(runs.c.run_id, runs.c.job, runs.c.host, runs.c.pid, runs.c.started_at).where(runs.c.outcome == "running")
        try:
            with self.engine.connect() as connection:
                rows = list(connection.execute(query))
        except SQLAlchemyError as error:
            log.warning("catalog.unreadable", error=str(error.__class__.__name__))
            return []
        marked = []
        for row in rows:
            if not run_is_orphaned(row.run_id, row.host, row.pid, row.started_at):
                continue
            who = f"pid {row.pid} on {row.host}" if row.pid is not None else "an earlier worker"
            reason = f"the process ({who}) ended before the run finished: killed, crashed or stopped past its deadline"
            changed = self._write(runs.update().where((runs.c.run_id == row.run_id) & (runs.c.outcome == "running")).values(
                outcome="interrupted", finished_at=datetime.now(timezone.utc), stage="interrupted", reason=reason))
            if changed:
                log.warning("catalog.run_interrupted", interrupted_run=row.run_id, interrupted_job=row.job,
                            started_at=_aware(row.started_at).isoformat())
                marked.append({"run_id": row.run_id, "job": row.job, "started_at": _aware(row.started_at), "reason": reason})
        return marked

    def last_runs(self) -> dict[str, dict[str, Any]]:
        """Return the newest finished run of every job, by job name (empty if the catalog cannot be read)."""
        if self.engine is None:
            return {}
        newest = (
            select(runs.c.job, func.max(runs.c.started_at).label("started_at"))
            .where(runs.c.outcome != "running")
            .group_by(runs.c.job)
            .subquery()
        )
        query = select(runs).join(newest, (runs.c.job == newest.c.job) & (runs.c.started_at == newest.c.started_at))
        try:
            with self.engine.connect() as connection:
                return {row.job: dict(row._mapping) for row in connection.execute(query)}
        except SQLAlchemyError as error:
            log.warning("catalog.unreadable", error=str(error.__class__.__name__))
            return {}

    def history(self, since: datetime | None = None, job: str | None = None, outcome: str | None = None,
                limit: int | None = None, mentioning: str | None = None) -> list[dict[str, Any]]:
        """Return recorded runs newest first: only those started at or after `since`, of `job`, with `outcome`,
        whose details hold the text `mentioning`, at most `limit` (all when None). Empty if the catalog cannot be
        read."""
        if self.engine is None:
            return []
        query = select(runs).order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
        if since is not None:
            query = query.where(runs.c.started_at >= since)
        if job is not None:
            query = query.where(runs.c.job == job)
        if outcome is not None:
            query = query.where(runs.c.outcome == outcome)
        if mentioning is not None:
            query = query.where(runs.c.details.contains(mentioning, autoescape=True))
        if limit is not None:
            query = query.limit(limit)
        try:
            with self.engine.connect() as connection:
                return [dict(row._mapping) for row in connection.execute(query)]
        except SQLAlchemyError as error:
            log.warning("catalog.unreadable", error=str(error.__class__.__name__))
            return []

    def _write(self, statement: Any) -> int:
        """Run one write; return the rows it changed (0 when the catalog is away or the write failed: it warns)."""
        if self.engine is None:
            return 0
        try:
            with self.engine.begin() as connection:
                return connection.execute(statement).rowcount or 0
        except SQLAlchemyError as error:
            log.warning("catalog.write_failed", error=error.__class__.__name__, detail=str(getattr(error, "orig", None) or error)[:200])
            return 0


CONNECT_TIMEOUT_S = 10  # a catalog server that does not answer must not hold a backup up for long
BUSY_S = 2  # the longest one catalog access waits for another process's lock
STATEMENT_S = 10  # the longest one catalog statement may run on PostgreSQL (they are all small)


def _connect_args(backend: str, query: Mapping[str, Any]) -> dict[str, Any]:
    """Return the driver's connection arguments that bound every wait: SQLite's busy timeout; PostgreSQL's
    connect timeout, lock_timeout and statement_timeout (unless CATALOG_URL sets its own)."""
    if backend == "sqlite":
        return {"timeout": BUSY_S}
    if backend != "postgresql":
        return {}
    found: dict[str, Any] = {}
    if "connect_timeout" not in query:
        found["connect_timeout"] = CONNECT_TIMEOUT_S
    if "options" not in query:
        found["options"] = f"-c lock_timeout={BUSY_S * 1000} -c statement_timeout={STATEMENT_S * 1000}"
    return found


def catalog_problem(url: str) -> str | None:
    """Return why CATALOG_URL can never work (not a URL, a port that is not a number, a user or password the host
    cannot be told from, or a database or driver SQLAlchemy does not know), password masked; None if it may. A
    known driver whose Python module is missing only warns when the catalog opens (run history is not recorded),
    like an unreachable catalog server. Connects to nothing."""
    shown = mask_url(url)
    if problem := ambiguous_userinfo(url):
        return f"CATALOG_URL: {problem}"
    try:
        parsed = make_url(catalog_url(url))  # postgresql:// and postgres:// open through psycopg 3
        port = parsed.port
    except ArgumentError:
        return f"CATALOG_URL={shown!r} is not a SQLAlchemy URL, like sqlite:////app/data/catalog.db"
    except ValueError:  # SQLAlchemy reads the port with int(): "notaport", "5432,5433", an unclosed [IPv6
        port = -1
    if port is not None and not 1 <= port <= 65535:
        return (f"CATALOG_URL={shown!r} has a port that is not a number from 1 to 65535; write one host and port "
                "like postgresql://user:password@host:5432/db (several hosts go in the query: ?host=h1:5432&host=h2:5432)")
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        return (f"CATALOG_URL={shown!r} names the driver {parsed.drivername!r}, which SQLAlchemy does not know; "
                "use a URL like sqlite:////app/data/catalog.db or postgresql+psycopg://user@host/db")
    return None


def open_catalog(url: str, secrets: list[str] | None = None) -> Catalog:
    """Given a SQLAlchemy URL (a plain postgresql:// or postgres:// one goes through psycopg 3) and the secrets
    that no row may hold, return a Catalog with its table created if missing; one that cannot open only warns,
    its password masked."""
    secrets = list(secrets or []) + url_secrets(url)
    try:
        parsed = make_url(catalog_url(url))
        backend = parsed.get_backend_name()
        if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            ensure_dir(path.parent)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        engine = create_engine(parsed, connect_args=_connect_args(backend, parsed.query), hide_parameters=True)
        metadata.create_all(engine)
        _upgrade(engine)
        return Catalog(engine, secrets)
    except (SQLAlchemyError, OSError, ImportError, ValueError) as error:
        detail = scrub(str(error), secrets)
        hint = ("another process holds the catalog locked; this run is not recorded in the history, the backups go on"
                if "locked" in detail or "lock timeout" in detail else
                "run history will not be recorded; check CATALOG_URL and that its driver is installed")
        log.warning("catalog.unavailable", error=error.__class__.__name__, detail=detail[:200], hint=hint)
        return Catalog(None, secrets)


def _upgrade(engine: Engine) -> None:
    """Bring a catalog created by an earlier version up to this table: add the host and pid columns, and widen
    the size columns to 64 bits where the database has a narrower integer (PostgreSQL's INTEGER)."""
    columns = {column["name"]: column for column in inspect(engine).get_columns("runs")}
    statements = [f"ALTER TABLE runs ADD COLUMN {name} {kind}" for name, kind in (("host", "VARCHAR(255)"), ("pid", "INTEGER"))
                  if name not in columns]
    if engine.dialect.name == "postgresql":
        statements += [f"ALTER TABLE runs ALTER COLUMN {name} TYPE BIGINT" for name in ("size", "raw_size")
                       if not isinstance(columns[name]["type"], BigInteger)]
    if statements:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
        log.info("catalog.upgraded", changes=statements)
