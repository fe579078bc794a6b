"""Telling people what happened: a webhook (Slack, Discord, anything that takes JSON) and a dead-man's-switch
ping in the healthchecks.io style, both sent from background threads.

A receiver that is down, slow or hanging only costs a warning in the log: messages wait in a small bounded
queue, each gets a few attempts within a fixed budget, and at exit the queue gets a few seconds at most (less
than a second after SIGTERM). Nothing here changes an outcome or an exit code.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
import json
import queue
import socket
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import structlog
import urllib3

from jobs.artifacts import ARTIFACT_NAME, utc_iso
from jobs.redact import endpoint_secrets, mask_endpoint, scrub, scrub_value
from worker import __version__
from worker.freshness import disk_listener
from worker.runs import Outcome, add_listener
from worker.text import human_size

if TYPE_CHECKING:
    from worker.config import Config

log = structlog.get_logger("worker.notify")

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 3.0
ATTEMPTS = 3
BACKOFF_S = (0.5, 1.5)  # before the second and the third attempt
MESSAGE_BUDGET_S = 8.0  # one message, every attempt and pause included
QUEUE_SIZE = 32
DRAIN_S = 5.0  # what a one-shot command gives queued messages at exit
STOP_DRAIN_S = 0.75  # the same after SIGTERM/SIGINT: `run` has promised to stop within 10 s
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
TEXT_LIMIT = 1900  # Discord's `content` holds at most 2000 characters
PING_BODY_LINES = 20


# --- URLs: a webhook's path is its password (jobs.redact masks it) -----------------------------------------------

def ping_url(base: str, suffix: str) -> str:
    """Given a ping URL and `start`, `fail`, `log` or "", return the URL to call (healthchecks.io style)."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + (f"/{suffix}" if suffix else "")
    return urlunsplit((parts.scheme, parts.netloc, path or "/", parts.query, ""))


# --- What is said ---------------------------------------------------------------------------------------------

def backup_set(outcome: Outcome, sets: list[str]) -> str | None:
    """Return the backup set a run concerns when it is known: from its fields, its artifact, or the only set."""
    named = outcome.fields.get("set") or outcome.fields.get("backup_set")
    if isinstance(named, str):
        return named
    artifact = outcome.fields.get("artifact")
    match = ARTIFACT_NAME.match(artifact) if isinstance(artifact, str) else None
    if match:
        return match["name"]
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
                "flags", "warnings", "passed_over"):
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


def ping_body(outcome: Outcome, host: str, what: str | None = None) -> str:
    """Return the body of a `/fail` or `/log` ping: a heading line (`what` ran, default the job) and the last lines
    of the reason."""
    lines = (outcome.reason or "").splitlines()[-PING_BODY_LINES:]
    where = f" at stage {outcome.stage}" if outcome.stage else ""
    return "\n".join([f"{what or outcome.job} {outcome.outcome} on {host}{where}", *lines])[:10000]


# --- Delivery -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Message:
    url: str
    body: bytes
    content_type: str
    what: str  # for the log: "webhook", "ping start", "ping fail", …
    run: dict[str, str] = field(default_factory=dict)  # job and run_id, for the log


def _problem(error: Exception, timeout: urllib3.Timeout, secrets: list[str]) -> str:
    if isinstance(error, urllib3.exceptions.NewConnectionError):  # before ConnectTimeoutError: a subclass in urllib3 2
        text = f"cannot connect ({str(error).rsplit(':', 1)[-1].strip() or type(error).__name__})"
    elif isinstance(error, urllib3.exceptions.ConnectTimeoutError):
        text = f"no connection within {timeout.connect_timeout:.1f} s"
    elif isinstance(error, urllib3.exceptions.ReadTimeoutError):
        text = f"no answer within {timeout.read_timeout:.1f} s"
    else:
        text = f"{type(error).__name__}: {error}"
    return scrub(text, secrets)[:300]


def deliver(pool: urllib3.PoolManager, message: Message, deadline: float) -> tuple[str | None, int]:
    """POST a message until it is accepted, a few attempts at most, all before `deadline` (time.monotonic()).

    Return (None, attempts) on a 2xx answer, else (the last problem in words, attempts made). Never raise.
    """
    secrets = endpoint_secrets(message.url)
    problem, attempts = "no time left to send", 0
    while attempts < ATTEMPTS:
        remaining = deadline - time.monotonic()
        if remaining < 0.2:
            break
        if attempts:
            time.sleep(min(BACKOFF_S[attempts - 1], remaining - 0.2))
            remaining = deadline - time.monotonic()
        attempts += 1
        timeout = urllib3.Timeout(connect=min(CONNECT_TIMEOUT_S, remaining), read=min(READ_TIMEOUT_S, remaining))
        try:
            response = pool.request("POST", message.url, body=message.body, timeout=timeout, retries=False,
                                    redirect=False, headers={"Content-Type": message.content_type,
                                                             "User-Agent": f"backup-worker/{__version__}"})
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as error:
            problem = _problem(error, timeout, secrets)
            continue
        if 200 <= response.status < 300:
            return None, attempts
        problem = f"HTTP {response.status}"
        if response.status not in RETRY_STATUSES:
            break
    return problem, attempts


class Sender:
    """One receiver: a daemon thread, a bounded queue and a kept connection pool. `send` never blocks."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.receiver = mask_endpoint(url)
        self._queue: queue.Queue[Message | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._deadline = float("inf")  # set by close(): nothing is sent after it
        self._lock = threading.Lock()

    def send(self, message: Message) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"notify-{self.name}", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            log.warning("notify.dropped", receiver=self.receiver, what=message.what, **message.run,
                        detail=f"{QUEUE_SIZE} messages are already waiting for a receiver that does not answer")

    def close(self, grace: float, cancel: threading.Event | None = None) -> bool:
        """Give queued messages at most `grace` seconds (less once `cancel` is set); return whether all went out."""
        thread = self._thread
        if thread is None:
            return True
        ends = time.monotonic() + grace
        self._deadline = ends
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        while thread.is_alive() and time.monotonic() < ends:
            if cancel is not None and cancel.is_set():
                ends = min(ends, time.monotonic() + STOP_DRAIN_S)
                self._deadline = ends
            thread.join(0.05)
        if thread.is_alive():
            log.warning("notify.abandoned", receiver=self.receiver,
                        detail=f"messages still waiting after {grace:.1f} s were not sent; the worker did not wait longer")
            return False
        return True

    def _loop(self) -> None:
        pool = urllib3.PoolManager(num_pools=2, maxsize=1)
        while True:
            message = self._queue.get()
            if message is None:
                return
            deadline = min(time.monotonic() + MESSAGE_BUDGET_S, self._deadline)
            problem, attempts = deliver(pool, message, deadline)
            if problem:
                log.warning("notify.failed", receiver=self.receiver, what=message.what, attempts=attempts,
                            problem=problem, **message.run,
                            hint="the outcome stands; check the receiver URL and that it answers")
            else:
                log.debug("notify.sent", receiver=self.receiver, what=message.what, **message.run)


@dataclass
class Notifier:
    """Turns run events into webhook messages and pings, per NOTIFY_ON and the configured URLs."""

    webhook: Sender | None
    webhook_url: str | None
    notify_on: str
    ping: Sender | None
    ping_url: str | None
    host: str
    sets: list[str]
    secrets: list[str] = field(default_factory=list, repr=False)  # scrubbed from every body sent

    def listener(self, event: str, outcome: Outcome) -> None:
        run = {"job": outcome.job, "run_id": outcome.run_id}
        if self.ping and self.ping_url and outcome.job == "backup":
            if event == "started":
                self.ping.send(Message(ping_url(self.ping_url, "start"), b"", "text/plain", "ping start", run))
            else:
                # A skipped backup (another one holds the lock) is logged, not failed: the other one pings its end.
                suffix = "" if outcome.outcome == "succeeded" else "fail" if outcome.outcome in FAILURES else "log"
                body = ping_body(outcome, self.host) if suffix else sentence(outcome, self.host, backup_set(outcome, self.sets))
                body = scrub(body, self.secrets)
                self.ping.send(Message(ping_url(self.ping_url, suffix), body.encode(), "text/plain; charset=utf-8",
                                       f"ping {suffix or 'success'}", run))
        if self.ping and self.ping_url and on_start(outcome) and event == "finished":
            # A restore at start is no backup (no `start`, which would time one), but the check hears of it: a
            # failure stops the worker before any backup, a success is logged (`/log` changes no state).
            suffix = "log" if outcome.ok else "fail"
            set_name = backup_set(outcome, self.sets)
            body = scrub(sentence(outcome, self.host, set_name) if outcome.ok
                         else ping_body(outcome, self.host, f"restore at start of {set_name}"), self.secrets)
            self.ping.send(Message(ping_url(self.ping_url, suffix), body.encode(), "text/plain; charset=utf-8",
                                   f"ping {suffix}", run))
        if self.webhook and self.webhook_url and event == "finished" and wants_webhook(outcome, self.notify_on):
            document = json.dumps(scrub_value(payload(outcome, self.host, self.sets), self.secrets), default=str).encode()
            self.webhook.send(Message(self.webhook_url, document, "application/json", "webhook", run))

    def close(self, grace: float, cancel: threading.Event | None = None) -> None:
        ends = time.monotonic() + grace
        for sender in (self.webhook, self.ping):
            if sender is not None:
                sender.close(max(0.0, ends - time.monotonic()), cancel)


def make_notifier(config: "Config", sets: list[str]) -> Notifier | None:
    """Return a Notifier for the configured URLs, or None when neither NOTIFY_WEBHOOK_URL nor HEALTHCHECK_PING_URL is set."""
    if not config.notify_webhook_url and not config.healthcheck_ping_url:
        return None
    return Notifier(
        webhook=Sender("webhook", config.notify_webhook_url) if config.notify_webhook_url else None,
        webhook_url=config.notify_webhook_url,
        notify_on=config.notify_on,
        ping=Sender("ping", config.healthcheck_ping_url) if config.healthcheck_ping_url else None,
        ping_url=config.healthcheck_ping_url,
        host=socket.gethostname(),
        sets=sets,
        secrets=config.secrets(),
    )


@contextmanager
def watching(config: "Config", cancel: threading.Event, sets: list[str]) -> Iterator[None]:
    """While inside, notify run outcomes and warn about a full backup volume after each backup.

    On exit, queued messages get at most DRAIN_S seconds, or STOP_DRAIN_S once `cancel` is set (a stop signal).
    """
    notifier = make_notifier(config, sets)
    removers: list[Callable[[], None]] = [add_listener(disk_listener(config))]
    if notifier is not None:
        removers.append(add_listener(notifier.listener))
    try:
        yield
    finally:
        for remove in removers:
            remove()
        if notifier is not None:
            notifier.close(STOP_DRAIN_S if cancel.is_set() else DRAIN_S, cancel)
