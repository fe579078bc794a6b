"""Pings: a dead-man's-switch in the healthchecks.io style (HEALTHCHECK_PING_URL). A backup pings `start` when
it starts and its end when it ends (the URL itself on success, `/fail`, or `/log` when it was skipped); a
restore at start pings `/log` or `/fail`. The check raises its alarm when the pings stop."""

from urllib.parse import urlsplit, urlunsplit

from jobs.redact import scrub
from worker.monitoring.delivery import Message
from worker.monitoring.notifications import FAILURES, backup_set, on_start, sentence
from worker.runs import Outcome

PING_BODY_LINES = 20


def ping_url(base: str, suffix: str) -> str:
    """Given a ping URL and `start`, `fail`, `log` or "", return the URL to call (healthchecks.io style)."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + (f"/{suffix}" if suffix else "")
    return urlunsplit((parts.scheme, parts.netloc, path or "/", parts.query, ""))


def ping_body(outcome: Outcome, host: str, what: str | None = None) -> str:
    """Return the body of a `/fail` or `/log` ping: a heading line (`what` ran, default the job) and the last lines
    of the reason."""
    lines = (outcome.reason or "").splitlines()[-PING_BODY_LINES:]
    where = f" at stage {outcome.stage}" if outcome.stage else ""
    return "\n".join([f"{what or outcome.job} {outcome.outcome} on {host}{where}", *lines])[:10000]


def ping_messages(event: str, outcome: Outcome, url: str, host: str, sets: list[str],
                  secrets: list[str]) -> list[Message]:
    """Return the pings a run event makes (none for most jobs), their bodies scrubbed of `secrets`."""
    run = {"job": outcome.job, "run_id": outcome.run_id}
    found = []
    if outcome.job == "backup":
        if event == "started":
            found.append(Message(ping_url(url, "start"), b"", "text/plain", "ping start", run))
        else:
            # A skipped backup (another one holds the lock) is logged, not failed: the other one pings its end.
            suffix = "" if outcome.outcome == "succeeded" else "fail" if outcome.outcome in FAILURES else "log"
            body = ping_body(outcome, host) if suffix else sentence(outcome, host, backup_set(outcome, sets))
            body = scrub(body, secrets)
            found.append(Message(ping_url(url, suffix), body.encode(), "text/plain; charset=utf-8",
                                 f"ping {suffix or 'success'}", run))
    if outcome.job == "drill" and event == "finished" and outcome.outcome in FAILURES:
        # A failed restore drill (issue 22): the copies a disaster would need do not restore; no `start` (a
        # drill is no backup), no success ping (the backups' own pings say the schedule runs).
        body = scrub(ping_body(outcome, host, "restore drill"), secrets)
        found.append(Message(ping_url(url, "fail"), body.encode(), "text/plain; charset=utf-8", "ping fail", run))
    if on_start(outcome) and event == "finished":
        # A restore at start is no backup (no `start`, which would time one), but the check hears of it: a
        # failure stops the worker before any backup, a success is logged (`/log` changes no state).
        suffix = "log" if outcome.ok else "fail"
        set_name = backup_set(outcome, sets)
        body = scrub(sentence(outcome, host, set_name) if outcome.ok
                     else ping_body(outcome, host, f"restore at start of {set_name}"), secrets)
        found.append(Message(ping_url(url, suffix), body.encode(), "text/plain; charset=utf-8", f"ping {suffix}", run))
    return found
