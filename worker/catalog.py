"""The catalog: run history in any SQLAlchemy database (a SQLite file in BACKUP_DIR by default).

The backup files are the truth; the catalog is history and can be lost. So a catalog that fails only warns:
it never fails a backup.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
import json
import os
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, Text, create_engine, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from jobs.artifacts import FILE_MODE, ensure_dir

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
    Column("size", Integer),
    Column("raw_size", Integer),
    Column("duration_s", Float),
    Column("details", Text),
)


@dataclass
class Catalog:
    engine: Engine | None

    def start(self, run_id: str, job: str, started_at: datetime) -> None:
        self._write(runs.insert().values(run_id=run_id, job=job, started_at=started_at, outcome="running"))

    def finish(self, run_id: str, outcome: str, duration_s: float, stage: str | None = None,
               reason: str | None = None, fields: dict[str, Any] | None = None) -> None:
        fields = fields or {}
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
                limit: int | None = None) -> list[dict[str, Any]]:
        """Return recorded runs newest first: only those started at or after `since`, of `job`, with `outcome`,
        at most `limit` (all when None). Empty if the catalog cannot be read."""
        if self.engine is None:
            return []
        query = select(runs).order_by(runs.c.started_at.desc(), runs.c.run_id.desc())
        if since is not None:
            query = query.where(runs.c.started_at >= since)
        if job is not None:
            query = query.where(runs.c.job == job)
        if outcome is not None:
            query = query.where(runs.c.outcome == outcome)
        if limit is not None:
            query = query.limit(limit)
        try:
            with self.engine.connect() as connection:
                return [dict(row._mapping) for row in connection.execute(query)]
        except SQLAlchemyError as error:
            log.warning("catalog.unreadable", error=str(error.__class__.__name__))
            return []

    def _write(self, statement: Any) -> None:
        if self.engine is None:
            return
        try:
            with self.engine.begin() as connection:
                connection.execute(statement)
        except SQLAlchemyError as error:
            log.warning("catalog.write_failed", error=error.__class__.__name__, detail=str(getattr(error, "orig", None) or error)[:200])


def open_catalog(url: str) -> Catalog:
    """Given a SQLAlchemy URL, return a Catalog with its table created; one that cannot open only warns."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            path = Path(parsed.database)
            ensure_dir(path.parent)
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        engine = create_engine(url, connect_args={"timeout": 30} if parsed.get_backend_name() == "sqlite" else {})
        metadata.create_all(engine)
        return Catalog(engine)
    except (SQLAlchemyError, OSError, ImportError) as error:
        log.warning("catalog.unavailable", error=error.__class__.__name__, detail=str(error)[:200],
                    hint="run history will not be recorded; check CATALOG_URL and that its driver is installed")
        return Catalog(None)
