"""Every child started through jobs/execute.py dies with the worker: the parent-death signal is set on every
shape of start, from the main thread and from a pool thread, and a SIGKILLed parent takes its children along."""

from collections.abc import Callable
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

from jobs import execute
from tests.conftest import ROOT

# The child asks the kernel for its own parent-death signal and session, and prints them.
REPORT = ("import ctypes, os; value = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0); "
          "print(value.value, os.getsid(0))")


def _spawned(args: list[str]) -> str:
    with execute.reading(args) as child:
        out = child.stdout.read().decode()
        child.wait(10)
    return out


def _plain_spawn(args: list[str]) -> str:
    with execute.spawn(args, stdout=subprocess.PIPE) as child:
        out = child.stdout.read().decode()
        child.wait(10)
    return out


def _writing(args: list[str]) -> str:
    import tempfile

    with tempfile.TemporaryFile() as out:
        with execute.spawn(args, stdin=subprocess.PIPE, stdout=out) as child:
            child.stdin.close()
            child.wait(10)
        out.seek(0)
        return out.read().decode()


def _run(args: list[str]) -> str:
    return execute.run(args).stdout


@pytest.mark.parametrize("start", [_plain_spawn, _spawned, _writing, _run], ids=["spawn", "reading", "writing", "run"])
def test_every_child_gets_sigkill_as_its_parent_death_signal_in_its_own_session(start: Callable[[list[str]], str]) -> None:
    deathsig, session = map(int, start([sys.executable, "-c", REPORT]).split())
    assert deathsig == signal.SIGKILL
    assert session != os.getsid(0)  # its own session: a terminal's hang-up or Ctrl-C reaches the worker only


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_die_with_parent_sets_the_signal_asked_for(signum: int) -> None:
    out = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True,
                         preexec_fn=execute.die_with_parent(signum), check=True).stdout
    assert int(out.split()[0]) == signum


# A parent that starts `sleep` through execute.spawn (from its main thread, or from a pool thread as the
# scheduler's jobs do), prints the child's pid, and waits inside the `with` block until it is killed.
PARENT = """
import sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from jobs import execute

def hold():
    with execute.spawn(["sleep", "60"]) as child:
        print(child.process.pid, flush=True)
        time.sleep(60)

if sys.argv[1] == "main":
    hold()
else:
    ThreadPoolExecutor(max_workers=2).submit(hold)
    time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


@pytest.mark.parametrize("thread", ["main", "pool"])
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP, signal.SIGTERM], ids=["kill-9", "sighup", "sigterm"])
def test_a_child_dies_when_its_parent_dies_however_it_dies(thread: str, how: int) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, thread], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(how)  # a plain Python process dies of each of these
        parent.wait(10)
        deadline = time.monotonic() + 3
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not alive(child), f"the child outlived its parent ({signal.Signals(how).name}, {thread} thread)"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
