"""The one hook of run_job: listeners hear every start and outcome, and can never change an outcome."""

from worker.catalog import Catalog
from worker.runs import Outcome, add_listener, run_job


def test_listeners_hear_the_start_and_the_outcome_of_every_run() -> None:
    heard: list[tuple[str, str, str]] = []
    remove = add_listener(lambda event, outcome: heard.append((event, outcome.job, outcome.outcome)))
    try:
        run_job("backup", Catalog(None), lambda: {"artifact": "app-20261122T020000Z.sqlite.zst"})
    finally:
        remove()
    run_job("backup", Catalog(None), lambda: None)  # removed: hears nothing more
    assert heard == [("started", "backup", "running"), ("finished", "backup", "succeeded")]


def test_a_listener_that_raises_changes_no_outcome() -> None:
    def broken(event: str, outcome: Outcome) -> None:
        raise RuntimeError("receiver exploded")

    remove = add_listener(broken)
    try:
        ok = run_job("cleanup", Catalog(None), lambda: {"files": 1})
        failed = run_job("cleanup", Catalog(None), lambda: 1 / 0)
    finally:
        remove()
    assert ok.outcome == "succeeded" and ok.fields == {"files": 1}
    assert failed.outcome == "failed" and failed.stage == "internal"
