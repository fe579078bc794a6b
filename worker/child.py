"""The app that `run --exec COMMAND` starts beside the scheduler, and how it lives and dies with the worker.

Decisions (the README's "Running the app: `run --exec`" section says the same for users):

- COMMAND is split as a shell would (`shlex`) but run without one: no variable expansion, no globbing.
- The app gets the worker's environment (less the encryption identities: `jobs.execute.WITHHELD`), stdin,
  stdout and stderr as they are, and the umask the worker was started with (the worker narrows its own to 077
  for backups; the app's files are none of its business).
- The app runs in its own process group, in the same session. The worker forwards the signals it receives, so
  the app sees each one exactly once: a terminal's Ctrl-C reaches the foreground group, which is the worker's,
  and the worker passes it on; had the app stayed in the worker's group it would get Ctrl-C twice (once from the
  terminal, once forwarded), and many servers (uvicorn among them) read a second SIGINT as "quit now, drop the
  connections". Its own group also lets the worker SIGKILL the app together with the processes it started
  (uvicorn or gunicorn workers) when it ignores SIGTERM past the grace.
  The price, in a terminal only: the app is not in the terminal's foreground group, so an app that reads the
  terminal (an interactive debugger) is stopped by SIGTTIN, and Ctrl-Z suspends the worker but not the app.
- Linux: the app is started with PR_SET_PDEATHSIG = SIGTERM (`jobs.execute.die_with_parent`, the same mechanism
  that binds every job's child to the worker, with SIGKILL there), so if the worker dies without a chance to
  stop it (SIGKILL, the OOM killer, a crash in native code), the kernel sends the app SIGTERM. Elsewhere (macOS)
  there is no such call and an app can outlive a SIGKILLed worker. The kernel ties the signal to the *thread*
  that started the child: start it from the main thread, which lives as long as the process.
- When the worker is PID 1 (a container with no init), processes the app orphans are re-parented to it; the
  worker reaps the ones from the app's process group so they do not pile up as zombies. It never reaps other
  children: those belong to jobs (pg_dump and the like), whose exit status must reach the code that waits
  for them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
import os
from pathlib import Path
import re
import shlex
import signal
import subprocess

from jobs.execute import child_env, die_with_parent
_VARIABLE = re.compile(r"\$(\{)?([A-Za-z_][A-Za-z0-9_]*)")


class StartError(Exception):
    """The command cannot be started as given (exit 2); the message is one sentence."""


def split_command(text: str) -> list[str]:
    """Given the --exec text, return its arguments split as a shell would. Raise StartError if there are none
    or the quoting is unbalanced."""
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise StartError(f"--exec {text!r} cannot be split into arguments ({error}); check its quotes") from None
    if not argv:
        raise StartError('--exec needs a command, for example --exec "uvicorn app:app --port 8000"')
    return argv


def unexpanded_variables(argv: Sequence[str]) -> list[str]:
    """Return the names of `$NAME` / `${NAME}` references left in the arguments: nothing here expands them."""
    return sorted({match[2] for arg in argv for match in _VARIABLE.finditer(arg)})


def exit_code(returncode: int) -> int:
    """Return the exit status a shell would report for a child's returncode: a signal N becomes 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass
class App:
    """The running app: its process (in its own process group) and the program name, for the log."""

    process: subprocess.Popen
    program: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> int | None:
        """Return the app's exit status in shell terms (128 + N after signal N), or None while it runs."""
        returncode = self.process.poll()
        return None if returncode is None else exit_code(returncode)

    def send(self, number: int) -> None:
        """Send signal `number` to the app itself (not its group: the app stops its own workers)."""
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, number)
            except ProcessLookupError:
                pass

    def kill_group(self) -> None:
        """SIGKILL the app and everything still in its process group."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.send(signal.SIGKILL)


def start(argv: Sequence[str], umask: int | None = None) -> App:
    """Start `argv` as the app: own process group, inherited stdio and environment (less WITHHELD), the given
    umask, and (Linux) SIGTERM when the worker dies. Raise StartError with one sentence if it cannot be started."""
    program = argv[0]
    try:
        process = subprocess.Popen(list(argv), process_group=0, preexec_fn=die_with_parent(signal.SIGTERM, umask),
                                   close_fds=True, env=child_env())
    except FileNotFoundError:
        hint = "check the path" if "/" in program else "install it or give its full path (is it on PATH?)"
        raise StartError(f"cannot start the --exec command: {program!r} was not found; {hint}") from None
    except PermissionError:
        raise StartError(f"cannot start the --exec command: {program!r} is not executable (permission denied); "
                         "chmod +x it or run it through its interpreter") from None
    except OSError as error:
        raise StartError(f"cannot start the --exec command {program!r}: {error.strerror or error}; "
                         "check that it is a program for this system") from None
    return App(process=process, program=Path(program).name)


def reap_orphans(app: App) -> int:
    """When this process is PID 1, reap zombie children left by the app's process group; return how many."""
    if os.getpid() != 1:
        return 0
    reaped = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == app.pid:
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp …: comm may hold spaces and parentheses, so split after the last ")".
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) < 3 or fields[0] != "Z" or int(fields[1]) != 1 or int(fields[2]) != app.pid:
            continue
        try:
            if os.waitpid(int(entry.name), os.WNOHANG)[0]:
                reaped += 1
        except ChildProcessError:
            continue
    return reaped
