"""Hands each run event to the monitoring concerns, as borgmatic's hooks dispatch does: the webhook
(`notifications.py`), the pings (`pings.py`) and the disk check after each backup (`disk.py`).

`watching` wires them for one command; on exit, queued messages get at most a few seconds (less after a stop
signal). Nothing here changes an outcome or an exit code.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
import socket
import threading
import time
from typing import TYPE_CHECKING

from worker.monitoring.delivery import DRAIN_S, STOP_DRAIN_S, Sender
from worker.monitoring.disk import disk_listener
from worker.monitoring.notifications import wants_webhook, webhook_message
from worker.monitoring.pings import ping_messages
from worker.runs import Outcome, add_listener

if TYPE_CHECKING:
    from worker.config import Config


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
        if self.ping and self.ping_url:
            for message in ping_messages(event, outcome, self.ping_url, self.host, self.sets, self.secrets):
                self.ping.send(message)
        if self.webhook and self.webhook_url and event == "finished" and wants_webhook(outcome, self.notify_on):
            self.webhook.send(webhook_message(outcome, self.webhook_url, self.host, self.sets, self.secrets))

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
