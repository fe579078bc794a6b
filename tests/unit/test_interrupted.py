"""Runs a dead process left `running`: marked `interrupted` by exactly one process, told to the listeners once,
and notified and pinged as a failure."""

from datetime import datetime, timezone
from pathlib import Path
import socket
import subprocess
import sys

import pytest

from worker.catalog import open_catalog, runs
from worker.monitoring.dispatch import Notifier
from worker.monitoring.notifications import wants_webhook
from worker.runs import Outcome, add_listener, settle_interrupted


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_an_orphaned_run_is_settled_once_by_one_process_and_told_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    first, second = open_catalog(url), open_catalog(url)
    with first.engine.begin() as connection:
        connection.execute(runs.insert().values(run_id="killed", job="backup", started_at=datetime.now(timezone.utc),
                                                outcome="running", host=socket.gethostname(), pid=dead_pid()))
    heard: list[tuple[str, Outcome]] = []
    remove = add_listener(lambda event, outcome: heard.append((event, outcome)))
    try:
        (settled,) = settle_interrupted(first)
        assert settle_interrupted(second) == [] and settle_interrupted(first) == []
    finally:
        remove()
    assert [(event, outcome.run_id, outcome.outcome) for event, outcome in heard] == [("finished", "killed", "interrupted")]
    assert settled.job == "backup" and settled.stage == "interrupted" and settled.duration_s is None
    assert "ended before the run finished" in settled.reason


@pytest.mark.parametrize(("outcome", "notify_on", "posted"), [
    ("interrupted", "failure", True), ("failed", "failure", True), ("succeeded", "failure", False),
    ("interrupted", "all", True),
])
def test_an_interrupted_run_is_posted_as_a_failure(outcome: str, notify_on: str, posted: bool) -> None:
    assert wants_webhook(Outcome("backup", "r", outcome, None), notify_on) is posted


class Recorder:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, message: object) -> None:
        self.sent.append(message)


@pytest.mark.parametrize(("outcome", "suffix"), [("interrupted", "/fail"), ("failed", "/fail"), ("succeeded", ""),
                                                 ("skipped", "/log")])
def test_an_interrupted_backup_pings_fail(outcome: str, suffix: str) -> None:
    ping = Recorder()
    notifier = Notifier(webhook=None, webhook_url=None, notify_on="failure", ping=ping, ping_url="https://hc.example/key",
                        host="h", sets=["app"])
    notifier.listener("finished", Outcome("backup", "r", outcome, None if outcome == "interrupted" else 1.0, reason="gone"))
    assert [message.url for message in ping.sent] == [f"https://hc.example/key{suffix}"]
