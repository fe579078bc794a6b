"""What would stop the configured sources' backups, told before any backup runs.

Today that is PostgreSQL's client: pg_dump must be of the server's major version or a newer one, and the server
must answer to tell its version. `config` and `status` print each problem as a warning on stderr at start (their
stdout stays the document); `run` logs each one as an error at start and keeps running. Nothing is cached: every
backup chooses its pg_dump again, so installing the missing client (a new /usr/lib/postgresql/<major>/bin) is
picked up by the next backup without a restart, and until then each backup fails naming the client to install.
"""

from pathlib import Path
import sys

import structlog

from jobs import engines
from jobs.engines import postgres
from worker.config import Config

log = structlog.get_logger("worker.preflight")


def _source_urls(config: Config) -> list[str]:
    """Return every configured source URL once: the main one, then BACKUP_SOURCE_<NAME> ones (if configured)."""
    urls = [config.source_url] if config.source_url else []
    for spec in config.sources:
        if spec.url not in urls:
            urls.append(spec.url)
    return urls


def problems(config: Config) -> list[str]:
    """Given the configuration, return one sentence per source whose backups cannot run as things stand (no
    fitting pg_dump, naming the major to install; or a server that cannot be reached to tell its version).
    Each source is opened by `jobs.engines.open_source`, as the backup opens it (a SQLAlchemy URL's driver is
    ignored there). Passwords never appear: the engine's messages show URLs masked."""
    found = []
    for url in _source_urls(config):
        try:
            source = engines.open_source(url, Path.cwd())
        except ValueError:
            continue  # the configuration already reported it
        if isinstance(source, postgres.PostgresSource):
            problem = postgres.describe_tools(source)
            if problem:
                found.append(problem)
    return found


def warn(config: Config) -> None:
    """Print each problem as `warning: …` on stderr (for `config` and `status`)."""
    for problem in problems(config):
        print(f"warning: {problem}", file=sys.stderr, flush=True)


def log_problems(config: Config) -> None:
    """Log each problem as an error event (for `run`, which keeps running: the next backup checks again)."""
    for problem in problems(config):
        log.error("preflight.problem", problem=problem,
                  detail="backups fail until this is fixed; the worker keeps running and each backup checks again")
