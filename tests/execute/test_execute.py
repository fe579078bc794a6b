"""jobs/execute.py with real small processes: streams both ways, bounded scrubbed stderr, children never left behind."""

import os
from pathlib import Path
import threading
import time

import pytest

from jobs import execute


def gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    return not Path(f"/proc/{pid}").exists()


def test_a_reading_child_streams_its_stdout_and_exits_zero():
    with execute.reading(["sh", "-c", "printf abc; printf def"]) as child:
        data = child.stdout.read()
        assert child.wait(10) == 0
    assert data == b"abcdef"


def test_a_writing_child_receives_everything_written_to_its_stdin(tmp_path):
    out = tmp_path / "out"
    payload = os.urandom(3 << 20)
    with execute.writing(["sh", "-c", f"cat > '{out}'"]) as child:
        for start in range(0, len(payload), 1 << 20):
            child.stdin.write(payload[start:start + (1 << 20)])
        child.stdin.close()
        assert child.wait(10) == 0
    assert out.read_bytes() == payload


def test_writing_to_a_child_that_died_raises_instead_of_blocking():
    with execute.writing(["sh", "-c", "echo 'bad header' >&2; exit 1"]) as child:
        assert child.wait(10) == 1
        with pytest.raises(BrokenPipeError):
            for _ in range(8):
                child.stdin.write(b"x" * (1 << 20))
                child.stdin.flush()
        assert child.failure() == "sh exited with 1: bad header"


def test_the_stderr_tail_keeps_only_the_last_lines_with_secrets_scrubbed():
    script = 'for i in $(seq 1 100); do echo line $i >&2; done; echo "auth with $BW_TOKEN failed" >&2; exit 3'
    env = execute.child_env({"BW_TOKEN": "s3cret-pw"})
    completed = execute.run(["sh", "-c", script], env=env, secrets=["s3cret-pw"])
    assert completed.code == 3
    assert completed.failure.startswith("sh exited with 3: ")
    assert "line 100" in completed.failure and "line 81 " not in completed.failure + " "
    assert "s3cret-pw" not in completed.failure and "auth with *** failed" in completed.failure
    assert completed.failure.count(" | ") == execute.STDERR_LINES - 1


def test_a_very_long_stderr_line_is_cut():
    completed = execute.run(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x >&2; exit 1"])
    assert len(completed.failure) < 4 * execute.LINE_LIMIT


def test_a_stderr_filter_chooses_and_shortens_the_lines_kept_in_order_and_they_are_still_scrubbed():
    seen: list[str] = []

    def keep(line: str) -> str | None:  # keeps state across lines: drops a block after "begin"
        seen.append(line)
        if line == "begin" or (seen[-2:-1] == ["begin"]):
            return None
        return "kept " + line if line.startswith("err") else None

    script = ('printf "noise\\nerr one $BW_TOKEN\\nbegin\\nerr hidden\\n\\nerr two\\n" >&2; '
              "for i in $(seq 1 50); do echo noise $i >&2; done; exit 2")
    completed = execute.run(["sh", "-c", script], env=execute.child_env({"BW_TOKEN": "s3cret-pw"}), secrets=["s3cret-pw"],
                            stderr_filter=keep)
    assert completed.failure == "sh exited with 2: kept err one *** | kept err two"
    assert seen[:5] == ["noise", "err one s3cret-pw", "begin", "err hidden", "err two"]  # blank lines never reach it


def test_a_stderr_filter_that_raises_drops_the_line_and_the_child_is_still_drained():
    def keep(line: str) -> str | None:
        if line.startswith("boom"):
            raise ValueError(line)
        return line

    script = "yes boom | head -c 3000000 >&2; echo last >&2; exit 1"  # more than the pipe holds
    completed = execute.run(["sh", "-c", script], stderr_filter=keep, timeout=30)
    assert completed.failure == "sh exited with 1: last"


@pytest.mark.parametrize("args", [
    ["echo", "--password=s3cret pw"],
    ["echo", "host=h user=u password='s3cret pw' dbname=d"],
    ["echo", "postgresql://u:s3cret%20pw@h/d"],
    ["echo", "-p", "s3cret pw"],
])
def test_a_secret_in_the_arguments_is_refused_before_anything_starts(args):
    with pytest.raises(ValueError, match="secret"):
        with execute.spawn(args, secrets=["s3cret pw"]):
            pass


def test_a_password_equal_to_the_user_name_is_not_taken_for_a_slip():
    completed = execute.run(["echo", "user=postgres dbname=postgres"], secrets=["postgres"])
    assert completed.code == 0


def test_a_secret_reaches_the_child_through_its_environment():
    env = execute.child_env({"BW_TOKEN": "s3cret-pw"})
    completed = execute.run(["sh", "-c", 'printf %s "$BW_TOKEN"'], env=env, secrets=["s3cret-pw"])
    assert completed.stdout == "s3cret-pw"


def test_child_env_drops_the_named_variables(monkeypatch):
    monkeypatch.setenv("BW_DROP_ME", "1")
    env = execute.child_env({"BW_ADDED": "2"}, drop=["BW_DROP_ME"])
    assert "BW_DROP_ME" not in env and env["BW_ADDED"] == "2" and env["PATH"] == os.environ["PATH"]


def test_a_secret_file_is_private_and_never_overwritten(tmp_path):
    path = execute.secret_file(tmp_path, "pass", "*:*:*:*:s3cret")
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == "*:*:*:*:s3cret"
    with pytest.raises(FileExistsError):
        execute.secret_file(tmp_path, "pass", "other")


def test_the_child_is_killed_and_waited_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with execute.reading(["sleep", "60"]) as child:
            pid = child.process.pid
            raise RuntimeError("the pipeline failed")
    assert child.process.returncode is not None and child.process.returncode < 0
    assert gone(pid)


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period():
    started = time.monotonic()
    with execute.spawn(["sh", "-c", "trap '' TERM; echo ready >&2; while :; do sleep 0.1; done"]) as child:
        deadline = time.monotonic() + 10
        while "ready" not in child.tail.text() and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = child.process.pid
    assert child.process.returncode == -9
    assert gone(pid)
    assert time.monotonic() - started < 10


def test_helpers_the_child_started_are_stopped_with_it(tmp_path):
    pidfile = tmp_path / "grandchild"
    with execute.spawn(["sh", "-c", f"sleep 60 & echo $! > '{pidfile}'; wait"]) as child:
        deadline = time.monotonic() + 10
        while not pidfile.exists() or not pidfile.read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.process.returncode is not None
    status = Path(f"/proc/{grandchild}/status")
    assert gone(grandchild) or "zombie" in status.read_text()


def test_cancel_stops_a_streaming_child_promptly():
    cancel = threading.Event()
    with execute.reading(["sh", "-c", "printf start; exec sleep 60"], cancel=cancel) as child:
        assert child.stdout.read(5) == b"start"
        threading.Timer(0.2, cancel.set).start()
        started = time.monotonic()
        assert child.stdout.read() == b""
        assert time.monotonic() - started < 5
        assert child.wait(5) is not None and child.process.returncode < 0


def test_run_gives_up_after_its_timeout_and_leaves_no_child():
    with pytest.raises(execute.Timeout):
        execute.run(["sleep", "60"], timeout=0.3)


def test_run_returns_stdout_and_exit_code():
    completed = execute.run(["sh", "-c", "echo hello; exit 0"])
    assert (completed.code, completed.stdout) == (0, "hello\n")


def test_describe_exit_names_signals():
    assert execute.describe_exit(-15) == "was killed by SIGTERM"
    assert execute.describe_exit(2) == "exited with 2"


def test_a_missing_program_raises_oserror():
    with pytest.raises(FileNotFoundError):
        execute.run(["/nonexistent/pg_dump", "--version"])


def test_run_reports_a_child_that_failed_because_it_was_cancelled_as_cancelled():
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(execute.Timeout, match="cancelled"):
        execute.run(["sh", "-c", "trap 'exit 1' TERM; while :; do sleep 0.05; done"], timeout=None, cancel=cancel)


def test_run_returns_a_child_that_succeeded_even_if_cancel_came_later():
    cancel = threading.Event()
    completed = execute.run(["true"], cancel=cancel)
    cancel.set()
    assert completed.code == 0
