"""The run context: every job run gets a run_id, a start event, exactly one outcome event and a catalog row.

Any exception becomes a `failed` outcome here, at the job boundary, so the scheduler never sees one. The catalog
cannot take an outcome away either: its errors only warn, and the outcome event is logged first.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
import time
from typing import Any
import uuid

import structlog

from jobs.errors import BusyError, JobError
from jobs.volume import explain
from worker.catalog import Catalog

log = structlog.get_logger("worker.runs")

# What run_job tells about every run: ("started", outcome with outcome "running") and ("finished", outcome).
Listener = Callable[[str, "Outcome"], None]
_listeners: list[Listener] = []


@dataclass
class Outcome:
    job: str
    run_id: str
    outcome: str  # succeeded, failed or skipped; `interrupted` for a run a dead process left (settle_interrupted)
    duration_s: float | None  # None for an interrupted run: when it stopped is not known
    stage: str | None = None
    reason: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "succeeded"


def run_job(job: str, catalog: Catalog, work: Callable[[], dict[str, Any] | None]) -> Outcome:
    """Run `work` as one job run: log start and outcome, record both in the catalog, never raise (but on exit)."""
    run_id = uuid.uuid4().hex[:12]
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(job=job, run_id=run_id):
        log.info("job.started")
        _record(settle_interrupted, catalog)
        _record(catalog.start, run_id, job, datetime.now(timezone.utc))
        _tell("started", Outcome(job=job, run_id=run_id, outcome="running", duration_s=0.0))
        outcome = Outcome(job=job, run_id=run_id, outcome="failed", duration_s=0.0)
        try:
            outcome.fields = work() or {}
            outcome.outcome = "succeeded"
        except BusyError as error:  # what the other sets of a cycle did stays (`sources`)
            outcome.outcome, outcome.reason, outcome.fields = "skipped", str(error), dict(error.fields)
        except JobError as error:  # Cancelled too: what it did before it stopped stays (a purge's counts so far)
            outcome.stage, outcome.reason, outcome.fields = error.stage, str(error), dict(error.fields)
        except OSError as error:  # a filesystem problem we did not foresee: still one sentence with the path
            outcome.stage, outcome.reason = "store", explain(error)
            log.debug("job.os_error", exc_info=True)
        except Exception as error:  # the job boundary: nothing escapes to the scheduler
            outcome.stage = "internal"
            outcome.reason = f"unexpected {type(error).__name__}: {error}; this is a bug, please report it with the log"
            log.error("job.crashed", exc_info=True)
        outcome.duration_s = round(time.monotonic() - started, 3)
        event = f"job.{outcome.outcome}"
        extra = {key: value for key, value in (("stage", outcome.stage), ("reason", outcome.reason)) if value}
        if outcome.outcome == "failed":
            log.error(event, duration_s=outcome.duration_s, **extra, **outcome.fields)
        elif outcome.outcome == "skipped":
            log.warning(event, duration_s=outcome.duration_s, **extra, **outcome.fields)
        else:
            log.info(event, duration_s=outcome.duration_s, **outcome.fields)
        _record(catalog.finish, run_id, outcome.outcome, outcome.duration_s, outcome.stage, outcome.reason, outcome.fields)
        _tell("finished", outcome)
    return outcome


def fail_if_any_failed(rows: dict[str, dict[str, Any]], fields: dict[str, Any], noun: str) -> None:
    """Given the rows of a run over several backup sets (each with `outcome`, `stage`, `reason`) and the run's
    fields, raise JobError (with those fields) when any set failed: with one set its own stage and reason, with
    several the failed sets named (`2 of 3 <noun> failed (…)`)."""
    failed = [name for name, row in rows.items() if row["outcome"] == "failed"]
    if not failed:
        return
    if len(rows) == 1:
        raise JobError(rows[failed[0]]["reason"], stage=rows[failed[0]]["stage"], fields=fields)
    reasons = "; ".join(f"{name} at {rows[name]['stage']}: {rows[name]['reason']}" for name in failed)
    stage = rows[failed[0]]["stage"] if len(failed) == 1 else "sources"
    raise JobError(f"{len(failed)} of {len(rows)} {noun} failed ({reasons})", stage=stage, fields=fields)


def settle_interrupted(catalog: Catalog) -> list[Outcome]:
    """Mark the runs a dead process left `running` as `interrupted` (see Catalog.mark_interrupted) and tell the
    listeners of each as a finished run, so it is notified and pinged as a failure; return them. Called when `run`
    starts and before every job. A row is marked by one process only, so each is told once, never again."""
    settled = []
    for row in catalog.mark_interrupted():
        outcome = Outcome(job=row["job"], run_id=row["run_id"], outcome="interrupted", duration_s=None,
                          stage="interrupted", reason=row["reason"],
                          fields={"started_at": row["started_at"].isoformat()})
        _tell("finished", outcome)
        settled.append(outcome)
    return settled


def _record(write: Callable[..., Any], *args: Any) -> None:
    """Call a catalog method; whatever goes wrong there only warns (the files are the truth, the catalog history)."""
    try:
        write(*args)
    except Exception as error:  # the job boundary: a catalog must never take a job's outcome away
        log.warning("catalog.write_failed", error=type(error).__name__, detail=str(error)[:200])


def add_listener(listener: Listener) -> Callable[[], None]:
    """Given a listener, have run_job call it at every run's start and outcome; return a function that removes it.

    Listeners run on the job's thread, so they must be quick (queue the work); one that raises only warns.
    """
    _listeners.append(listener)

    def remove() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return remove


def _tell(event: str, outcome: Outcome) -> None:
    for listener in list(_listeners):
        try:
            listener(event, outcome)
        except Exception as error:  # a listener never changes a run's outcome
            log.warning("job.listener_failed", listener=getattr(listener, "__qualname__", repr(listener)),
                        error=f"{type(error).__name__}: {error}")
