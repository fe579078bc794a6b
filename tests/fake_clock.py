"""Run `python -m worker ARGS` with a wall clock CLOCK_OFFSET_S seconds off (datetime.now and utcnow), as a
machine whose clock jumped would: `python tests/fake_clock.py backup`. Monotonic time is untouched."""

import datetime as _datetime
import os
import runpy
import sys

_Real = _datetime.datetime
OFFSET = _datetime.timedelta(seconds=float(os.environ.get("CLOCK_OFFSET_S", "0")))


class _Shifted(_Real):
    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return _Real.now(tz) + OFFSET

    @classmethod
    def utcnow(cls):  # type: ignore[override]
        return _Real.utcnow() + OFFSET


_datetime.datetime = _Shifted  # before the worker's modules import it
sys.argv = ["worker", *sys.argv[1:]]
runpy.run_module("worker", run_name="__main__", alter_sys=True)
