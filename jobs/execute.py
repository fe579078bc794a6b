"""The one way this project runs other programs: argument lists, secrets off the command line, bounded stderr.

Every child is started by `spawn` (or its two shapes `reading` and `writing`, or `run` for short commands) and
lives inside a `with` block: when the block ends, on success, error or cancel, a child still running is sent
SIGTERM, then SIGKILL after a grace period, and waited for. Its stderr is read by a thread into the last
`STDERR_LINES` lines, with every secret scrubbed, so a failure can name its cause without flooding anything. A
caller may pass a `stderr_filter` that chooses (or shortens) the lines kept, so that what a child prints beyond
its error (pg_restore's failing statement, which holds the dump's content) is never kept at all.

Secrets reach a child only through its environment or a 0600 file (`secret_file`); `spawn` refuses an argument
list that contains a known secret, so a slip shows up as an error in the tests rather than in /proc/*/cmdline.

Every child dies with the worker. It runs in its own session (a terminal's Ctrl-C or hang-up reaches the worker,
which stops its children in order, not the children behind its back), and on Linux it is started with
PR_SET_PDEATHSIG = SIGKILL (`die_with_parent`): if the worker dies without stopping it (kill -9, the OOM
killer, a crash), the kernel kills the child, so a pg_restore never goes on alone to commit. The kernel ties
the signal to the THREAD that started the child, not the process: a child must not outlive the thread that
spawned it, which `spawn`'s `with` block guarantees (the child is stopped before the block ends); never hand a
Child to another thread. Jobs run on the scheduler's pool threads, which live as long as the worker.
"""

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
import ctypes
from dataclasses import dataclass, field
import functools
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from jobs.encryption import IDENTITY_VARIABLES
from jobs.redact import scrub, secret_in_args

STDERR_LINES = 20
LINE_LIMIT = 1000  # characters kept of one stderr line
# Given each non-empty stderr line (cut to LINE_LIMIT) in order, return the text to keep, or None to drop the line.
StderrFilter = Callable[[str], str | None]
GRACE_S = 1.0  # between SIGTERM and SIGKILL
# Variables no child ever sees, whatever it is (pg_dump, the app of `run --exec`): the encryption identities.
WITHHELD = IDENTITY_VARIABLES
PIPE_SIZE = 1 << 20  # bigger pipes, fewer wake-ups when streaming (Linux's default ceiling for unprivileged users)
_POLL_S = 0.05
PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> "ctypes._CFuncPtr | None":
    """Return libc's prctl on Linux (looked up once, in the parent: a forked child must only call it), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def die_with_parent(signum: int = signal.SIGKILL, umask: int | None = None) -> Callable[[], None]:
    """Return the function a child runs between fork and exec (Popen's `preexec_fn`): on Linux it asks the kernel
    to send the child `signum` when the thread that started it ends (with the worker, kill -9 included), and
    exits at once if the worker died before that took effect; it also sets `umask` if given. Elsewhere (macOS)
    there is no such call and a child can outlive a SIGKILLed worker."""
    prctl = _prctl()
    parent = os.getpid()

    def prepare() -> None:  # in the child after fork: no locks, no logging, no imports
        if umask is not None:
            os.umask(umask)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
            if os.getppid() != parent:  # the worker died before prctl took effect: nobody would tell us
                os._exit(128 + signum)

    return prepare


class Tail:
    """The last lines a child wrote to a stream, read in a thread, scrubbed of secrets as they arrive; with
    `keep`, only the lines it returns (see `spawn`'s `stderr_filter`)."""

    def __init__(self, stream: IO[bytes], secrets: Sequence[str], lines: int = STDERR_LINES,
                 keep: StderrFilter | None = None) -> None:
        self._lines: deque[str] = deque(maxlen=lines)
        self._secrets = list(secrets)
        self._keep = keep
        self._thread = threading.Thread(target=self._read, args=(stream,), name="stderr-tail", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        continued = False  # inside a line longer than the limit: its rest is dropped
        with stream:
            while True:
                line = stream.readline(LINE_LIMIT * 4)
                if not line:
                    return
                text = line.decode("utf-8", "replace").rstrip()
                if text and not continued:
                    kept = text[:LINE_LIMIT] if self._keep is None else self._kept(text[:LINE_LIMIT])
                    if kept:
                        self._lines.append(scrub(kept[:LINE_LIMIT], self._secrets))
                continued = not line.endswith(b"\n")

    def _kept(self, text: str) -> str | None:
        try:
            return self._keep(text)  # type: ignore[misc]
        except Exception:  # a broken filter drops the line; the reader must go on draining the pipe
            return None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def text(self, separator: str = " | ") -> str:
        """Return the kept lines, oldest first, joined by `separator` ("" when the child wrote nothing)."""
        return separator.join(self._lines)


@dataclass
class Child:
    """A running child process started by `spawn`."""

    args: list[str]
    process: subprocess.Popen[bytes]
    tail: Tail
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return Path(self.args[0]).name

    @property
    def stdin(self) -> IO[bytes]:
        assert self.process.stdin is not None, "spawned without stdin=PIPE"
        return self.process.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None, "spawned without stdout=PIPE"
        return self.process.stdout

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None, cancel: threading.Event | None = None) -> int | None:
        """Wait for the child to exit; return its exit code, or None if `timeout` passed or `cancel` was set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _POLL_S if deadline is None else max(0.0, min(_POLL_S, deadline - time.monotonic()))
            try:
                code = self.process.wait(step)
            except subprocess.TimeoutExpired:
                if (cancel is not None and cancel.is_set()) or (deadline is not None and time.monotonic() >= deadline):
                    return None
                continue
            self.tail.join(1.0)  # the child is gone; let the reader take its last lines
            return code

    def stop(self, grace: float = GRACE_S) -> None:
        """Make sure the child is gone: SIGTERM, then SIGKILL after `grace` seconds; wait for it. Idempotent."""
        if self.process.poll() is None:
            _signal(self.process, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                _signal(self.process, signal.SIGKILL)
                self.process.wait()
        self.tail.join(1.0)

    def failure(self, code: int | None = None) -> str:
        """Return `NAME exited with 2: <stderr tail>` (or `was killed by SIGTERM`) for an error message."""
        code = self.process.returncode if code is None else code
        how = describe_exit(code)
        tail = self.tail.text()
        return f"{self.name} {how}" + (f": {tail}" if tail else "")


def _signal(process: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the child's whole process group (it leads one), so helpers it started go too."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass


def describe_exit(code: int | None) -> str:
    """Return `exited with N` or `was killed by SIGNAME` for a Popen return code."""
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


def child_env(extra: Mapping[str, str] | None = None, drop: Iterable[str] = ()) -> dict[str, str]:
    """Return this process's environment without the names in `drop` and WITHHELD, plus `extra`: a child's
    environment."""
    dropped = set(drop) | set(WITHHELD)
    env = {key: value for key, value in os.environ.items() if key not in dropped}
    env.update(extra or {})
    return env


def secret_file(directory: Path, name: str, content: str) -> Path:
    """Write `content` to the new file `directory/name`, readable by this user only (0600); return its path."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(content)
    return path


def _refuse_secrets_in(args: Sequence[str], secrets: Sequence[str]) -> None:
    """Raise ValueError if a secret is in `args` the way a slip puts it there (`jobs.redact.secret_in_args`)."""
    if secret_in_args(args, secrets):
        raise ValueError(f"refusing to start {Path(args[0]).name}: a secret is in its arguments, where every process can read it")


@contextmanager
def spawn(args: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: int | IO[bytes] = subprocess.DEVNULL,
          stdout: int | IO[bytes] = subprocess.DEVNULL, cwd: Path | None = None, secrets: Sequence[str] = (),
          cancel: threading.Event | None = None, stderr_filter: StderrFilter | None = None) -> Iterator[Child]:
    """Start `args` (a list, never a shell) and yield the Child; when the block ends, stop and wait for it.

    `secrets` are scrubbed from its stderr tail and must not appear in `args` (ValueError). `stderr_filter`, if
    given, sees each stderr line before it is kept and returns what to keep (None: nothing); it is called in
    order on the reader thread, so it may keep state across lines (give each child its own); what it returns is
    still scrubbed. Without it every line is kept. When `cancel` is set, the child is stopped at once (a reader
    of its stdout then sees end of file). The child runs in its own session and dies with the worker (see the
    module's docstring). Raise OSError if the program cannot be started.
    """
    args = [str(arg) for arg in args]
    _refuse_secrets_in(args, secrets)
    process = subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=dict(env) if env is not None else child_env(),
                               cwd=cwd, start_new_session=True, pipesize=PIPE_SIZE, preexec_fn=die_with_parent())
    assert process.stderr is not None
    child = Child(args, process, Tail(process.stderr, secrets, keep=stderr_filter))
    watcher = None
    if cancel is not None:
        watcher = threading.Thread(target=_stop_on_cancel, args=(child, cancel), name=f"cancel-{child.name}", daemon=True)
        watcher.start()
    try:
        yield child
    finally:
        child.done.set()
        if watcher is not None:
            watcher.join()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:  # a child that died leaves a broken pipe: nothing left to flush
                    pass
        child.stop()


def _stop_on_cancel(child: Child, cancel: threading.Event) -> None:
    while not child.done.wait(_POLL_S):
        if cancel.is_set():
            child.stop()
            return


def reading(args: Sequence[str], **options: object) -> AbstractContextManager[Child]:
    """`spawn` with the child's stdout as a pipe to read (`child.stdout`): a child that produces a stream."""
    return spawn(args, stdout=subprocess.PIPE, **options)  # type: ignore[arg-type]


def writing(args: Sequence[str], **options: object) -> AbstractContextManager[Child]:
    """`spawn` with the child's stdin as a pipe to write (`child.stdin`): a child that consumes a stream."""
    return spawn(args, stdin=subprocess.PIPE, **options)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Completed:
    code: int
    stdout: str
    failure: str  # `NAME exited with N: <stderr tail>`, for an error message


class Timeout(Exception):
    """`run` gave up waiting for a child (or was cancelled); the child was stopped."""


def run(args: Sequence[str], *, env: Mapping[str, str] | None = None, secrets: Sequence[str] = (),
        timeout: float | None = 60.0, cancel: threading.Event | None = None, stdout_limit: int = 16 << 20,
        stderr_filter: StderrFilter | None = None) -> Completed:
    """Run a command to completion; return its exit code, its stdout (up to `stdout_limit` bytes, decoded) and
    its failure text (its stderr lines as `stderr_filter` keeps them, see `spawn`). Raise Timeout if it takes
    longer than `timeout` (None: no limit), or if `cancel` is set before it succeeded (a child that succeeded is
    returned, cancel or not); OSError if it cannot be started."""
    with reading(args, env=env, secrets=secrets, cancel=cancel, stderr_filter=stderr_filter) as child:
        chunks: list[bytes] = []
        reader = threading.Thread(target=_read_limited, args=(child.stdout, chunks, stdout_limit), daemon=True)
        reader.start()
        code = child.wait(timeout, cancel)
        cancelled = cancel is not None and cancel.is_set()
        if code is None or (cancelled and code != 0):  # a child that failed because it was stopped was cancelled
            child.stop()
            raise Timeout(f"{child.name} was stopped: " + ("cancelled" if cancelled else f"it did not finish within {timeout:g} s"))
        reader.join(1.0)
        return Completed(code, b"".join(chunks).decode("utf-8", "replace"), child.failure(code))


def _read_limited(stream: IO[bytes], chunks: list[bytes], limit: int) -> None:
    size = 0
    try:
        while chunk := stream.read1(1 << 16):
            if size < limit:
                chunks.append(chunk[: limit - size])
            size += len(chunk)
    except (OSError, ValueError):  # the pipe was closed under us when the child was stopped
        pass
