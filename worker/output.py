"""How results are shown: plain sentences (or JSON) on stdout, failures as one sentence on stderr."""

import json
import sys

from worker.context import EXIT_FAILED, EXIT_OK
from worker.runs import Outcome


def say(text: str = "") -> None:
    print(text, flush=True)


def human_age(seconds: float) -> str:
    """Return an age like `2d03h`, `5h07m` or `4m09s`."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def report_failure(outcome: Outcome) -> int:
    """Print one sentence on stderr for a run that did not succeed; return its exit code."""
    if outcome.ok:
        return EXIT_OK
    where = f" at stage {outcome.stage}" if outcome.stage else ""
    print(f"{outcome.job} {outcome.outcome}{where}: {outcome.reason}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def print_json(outcome: Outcome) -> None:
    """Print a run's outcome as one JSON object on stdout: job, run_id, outcome, duration_s, stage and reason
    when it did not succeed, and the run's fields (for a backup: artifact, sizes, check, uploads)."""
    document = {"job": outcome.job, "run_id": outcome.run_id, "outcome": outcome.outcome, "duration_s": outcome.duration_s,
                **({"stage": outcome.stage, "reason": outcome.reason} if not outcome.ok else {}), **outcome.fields}
    print(json.dumps(document, indent=2, sort_keys=True, default=str), flush=True)
