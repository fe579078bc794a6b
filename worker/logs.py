"""Logging: structlog, one JSON object per line; the stdlib records of libraries (APScheduler, SQLAlchemy)
rendered the same way; tracebacks as plain text without frame locals; known secrets scrubbed from every value.
And the process's own stdout and stderr, scrubbed the same way, for everything a command prints."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
import logging
import sys
from typing import Any, TextIO

import structlog

from jobs.redact import scrub, scrub_value


def _redactor(secrets: list[str]) -> structlog.types.Processor:
    def processor(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        return {key: scrub_value(value, secrets) for key, value in event.items()}

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


class ScrubbedStream:
    """A text stream that writes everything through `scrub`: results, errors and log lines alike."""

    def __init__(self, stream: TextIO, secrets: list[str]) -> None:
        self.stream = stream
        self.secrets = secrets

    def write(self, text: str) -> int:
        self.stream.write(scrub(text, self.secrets))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, …
        return getattr(self.stream, name)


@contextmanager
def scrubbed_output(secrets: list[str]) -> Iterator[None]:
    """While inside, sys.stdout and sys.stderr mask every known secret and every URL's password in what is
    printed; the streams are put back on exit."""
    saved = sys.stdout, sys.stderr
    sys.stdout = ScrubbedStream(saved[0], secrets)  # type: ignore[assignment]
    sys.stderr = ScrubbedStream(saved[1], secrets)  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
