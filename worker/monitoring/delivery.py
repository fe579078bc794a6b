"""Getting a message to a receiver (a webhook or a ping URL) from a background thread.

A receiver that is down, slow or hanging only costs a warning in the log: messages wait in a small bounded
queue, each gets a few attempts within a fixed budget, and at exit the queue gets a few seconds at most (less
than a second after SIGTERM). Nothing here changes an outcome or an exit code.
"""

from dataclasses import dataclass, field
import queue
import threading
import time

import structlog
import urllib3

from jobs.redact import endpoint_secrets, mask_endpoint, scrub
from worker import __version__

log = structlog.get_logger("worker.notify")  # the logger name its events have always had

CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 3.0
ATTEMPTS = 3
BACKOFF_S = (0.5, 1.5)  # before the second and the third attempt
MESSAGE_BUDGET_S = 8.0  # one message, every attempt and pause included
QUEUE_SIZE = 32
DRAIN_S = 5.0  # what a one-shot command gives queued messages at exit
STOP_DRAIN_S = 0.75  # the same after SIGTERM/SIGINT: `run` has promised to stop within 10 s
RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}


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
