"""Interrupting a running database statement from another thread once the job is asked to stop: the one watcher
that SQLite's checks (`connection.interrupt()`) and a PostgreSQL purge (`connection.cancel()`) both use."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
import threading


@contextmanager
def acting_when(stop: Callable[[], bool], act: Callable[[], None], every_s: float = 0.05,
                name: str = "interrupt-watch") -> Iterator[None]:
    """Within the block, call `act()` once, as soon as `stop()` is true (looked at every `every_s` seconds); the
    watching thread has ended when the block does."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            if stop():
                act()
                return

    watcher = threading.Thread(target=watch, name=name, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
