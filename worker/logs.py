"""Logging: structlog, one JSON object per line; the stdlib records of libraries (APScheduler, SQLAlchemy)
rendered the same way; tracebacks as plain text without frame locals; known secrets scrubbed from every value."""

from collections.abc import Iterable
import logging
import sys
from typing import Any, TextIO

import structlog

from jobs.redact import scrub


def _redactor(secrets: list[str]) -> structlog.types.Processor:
    def redact(value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value, secrets)
        if isinstance(value, dict):
            return {key: redact(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [redact(item) for item in value]
        return value

    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        return {key: redact(value) for key, value in event.items()}

    return processor


def configure(level: str = "info", fmt: str = "json", secrets: Iterable[str] = (), stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to `stream` (stdout by default) at `level`, as JSON or console lines."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    ]
    renderer: structlog.types.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redactor(list(secrets)),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # APScheduler says "Running job …" for every run; our own start/outcome events say more, so keep its warnings only.
    logging.getLogger("apscheduler").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
