"""`python -m worker run …` as a subprocess for end-to-end tests: its JSON log lines (stdout) and stderr read as
they come, waited for by predicate, stopped with SIGTERM."""

from collections.abc import Callable, Iterator
import json
from pathlib import Path
import signal
import subprocess
import sys
import threading


def _parse(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class Started:
    """A running `python -m worker ARGS`; `events` are its JSON log lines, `stderr` its other output."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, python: list[str] | None = None) -> None:
        command = [sys.executable, *(python or ["-m", "worker"]), *args]
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self.arrived = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(self.process.stdout, True), daemon=True),
                        threading.Thread(target=self._read, args=(self.process.stderr, False), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, is_stdout: bool) -> None:
        for line in stream:
            with self.arrived:
                event = _parse(line)
                if event is not None:
                    self.events.append(event)
                elif not is_stdout:
                    self.stderr.append(line)
                self.arrived.notify_all()

    def wait(self, wanted: Callable[[dict], bool], timeout: float, what: str = "event") -> dict:
        """Return the first event `wanted` accepts; fail after `timeout` s (or when the worker exited first)."""
        def found() -> dict | None:
            return next((event for event in self.events if wanted(event)), None)

        with self.arrived:
            self.arrived.wait_for(lambda: found() is not None or self.process.poll() is not None, timeout)
        for reader in self.readers if self.process.poll() is not None else ():
            reader.join(5)
        event = found()
        assert event is not None, (f"no {what} within {timeout} s (exit {self.process.poll()}); saw "
                                   f"{[e.get('event') for e in self.events]}; stderr {''.join(self.stderr)}")
        return event

    def wait_for(self, name: str, timeout: float = 60, **fields: object) -> dict:
        """Return the first event called `name` whose fields include `fields`."""
        return self.wait(lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()),
                         timeout, f"{name!r} {fields or ''}")

    def names(self) -> list[str]:
        return [event.get("event") for event in self.events]

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM the worker (if it still runs); return its exit status once it and the readers are done."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout: float = 90) -> int:
        code = self.process.wait(timeout)
        for reader in self.readers:
            reader.join(5)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def started_workers() -> Iterator[list[Started]]:
    """The body of a `started` fixture: the workers a test starts, killed at its end whatever happened."""
    running: list[Started] = []
    yield running
    for worker in running:
        worker.kill()
