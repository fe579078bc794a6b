"""Notifications: what a person is told of a run, and the webhook (Slack, Discord, anything that takes JSON)
that tells it. The dead-man's-switch pings are in `pings.py`; both are sent by `delivery.py` from background
threads, and `dispatch.py` hands them each run event."""

from datetime import datetime, timezone
import json
from typing import Any

from jobs.artifacts import set_of
from jobs.manifest import utc_iso
from jobs.purge import removed_text
from jobs.redact import scrub_value
from worker import __version__
from worker.monitoring.delivery import Message
from worker.runs import Outcome
from worker.text import human_size

TEXT_LIMIT = 1900  # Discord's `content` holds at most 2000 characters


def backup_set(outcome: Outcome, sets: list[str]) -> str | None:
    """Return the backup set a run concerns when it is known: from its fields, its artifact, or the only set."""
    named = outcome.fields.get("set") or outcome.fields.get("backup_set")
    if isinstance(named, str):
        return named
    artifact = outcome.fields.get("artifact")
    owner = set_of(artifact) if isinstance(artifact, str) else None
    if owner:
        return owner.name
    if outcome.job == "backup" and len(sets) == 1:
        return sets[0]
    return None


def sentence(outcome: Outcome, host: str, set_name: str | None) -> str:
    """Return one sentence a person reads in a chat: what ran, where, how it ended and why."""
    what = f"{outcome.job} of {set_name}" if set_name and outcome.job == "backup" else outcome.job
    if on_start(outcome):
        what = f"restore at start of {set_name}" if set_name else "restore at start"
    if outcome.outcome == "succeeded":
        text = f"{what} succeeded on {host} in {outcome.duration_s:.1f} s"
        if on_start(outcome):
            text += f": {outcome.fields.get('backup')} from {outcome.fields.get('location')} into {outcome.fields.get('restored_to')}"
            passed = outcome.fields.get("passed_over")
            if isinstance(passed, list) and passed:  # the newer backups it did not take, and why
                text += f" ({'; '.join(map(str, passed))})"
        if outcome.job == "purge" and (removed := removed_text(outcome.fields)):
            text += f": {removed}"  # table retention: rows per rule, and what their cascades removed per table
        artifact = outcome.fields.get("artifact")
        if artifact:
            text += (f": {artifact}, {human_size(outcome.fields.get('size'))}"
                     f" ({human_size(outcome.fields.get('raw_size'))} raw)")
        warned = warnings(outcome)
        if warned:
            text = f"WARNING: {text}, but {'; '.join(warned)}"
        return text[:TEXT_LIMIT]
    where = f" at stage {outcome.stage}" if outcome.stage else ""
    return f"{what} {outcome.outcome} on {host}{where}: {outcome.reason or 'no reason recorded'}"[:TEXT_LIMIT]


def on_start(outcome: Outcome) -> bool:
    """Return whether a run is a restore at start (RESTORE_ON_START), which the pings report too."""
    return outcome.job == "restore" and outcome.fields.get("on_start") is True


def payload(outcome: Outcome, host: str, sets: list[str], now: datetime | None = None) -> dict[str, Any]:
    """Return the JSON object POSTed for an outcome: the contract fields, what is known of the backup, and the
    sentence as `text` (Slack, Mattermost) and `content` (Discord)."""
    set_name = backup_set(outcome, sets)
    text = sentence(outcome, host, set_name)
    body: dict[str, Any] = {
        "job": outcome.job,
        "outcome": outcome.outcome,
        "run_id": outcome.run_id,
        "duration_s": outcome.duration_s,
        "stage": outcome.stage,
        "reason": outcome.reason,
        "host": host,
        "finished_at": utc_iso((now or datetime.now(timezone.utc)).replace(microsecond=0)),
        "worker_version": __version__,
        "backup_set": set_name,
    }
    for key in ("artifact", "size", "raw_size", "verified", "uploaded", "sets", "on_start", "backup", "location",
                "flags", "warnings", "passed_over", "purged_rows", "purged_tables", "purge", "space"):
        if key in outcome.fields:
            body[key] = outcome.fields[key]
    body["text"] = text
    body["content"] = text
    return body


FAILURES = ("failed", "interrupted")  # an interrupted run (its process died) is told as a failure


def warnings(outcome: Outcome) -> list[str]:
    """Return what a run that did its work warns about (a backup that shrank, an empty source let through by
    BACKUP_ALLOW_EMPTY): one sentence each."""
    found = outcome.fields.get("warnings")
    return [str(item) for item in found] if isinstance(found, list) else []


def wants_webhook(outcome: Outcome, notify_on: str) -> bool:
    """Return whether an outcome is notified: every one with `all`; else failures (interrupted runs too), skipped
    backups and runs that warn (a warning asks someone to look, as a failure does)."""
    if notify_on == "all":
        return True
    return (outcome.outcome in FAILURES or (outcome.outcome == "skipped" and outcome.job == "backup")
            or bool(warnings(outcome)))


def webhook_message(outcome: Outcome, url: str, host: str, sets: list[str], secrets: list[str]) -> Message:
    """Return the webhook message for a finished run: its payload as JSON, secrets scrubbed."""
    document = json.dumps(scrub_value(payload(outcome, host, sets), secrets), default=str).encode()
    return Message(url, document, "application/json", "webhook", {"job": outcome.job, "run_id": outcome.run_id})
