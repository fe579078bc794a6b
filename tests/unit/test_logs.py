import io
import json
import logging

import pytest
import structlog

from worker import logs


@pytest.fixture(autouse=True)
def _logging_put_back():
    """These tests point logging at a StringIO; later tests must not log into it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_our_events_and_library_records_are_one_json_object_per_line_with_secrets_scrubbed() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", secrets=["hunter2"], stream=stream)
    with structlog.contextvars.bound_contextvars(job="backup", run_id="abc"):
        structlog.get_logger("jobs.pipeline").info("backup.written", url="postgresql://app:hunter2@db/app", size=3)
    logging.getLogger("apscheduler.scheduler").warning("Run time of job %s was missed", "backup")
    logging.getLogger("sqlalchemy").error("connect failed: password hunter2 rejected")
    ours, library, other = lines(stream)
    assert ours["event"] == "backup.written" and ours["job"] == "backup" and ours["run_id"] == "abc"
    assert ours["url"] == "postgresql://app:***@db/app" and ours["level"] == "info" and ours["ts"].endswith("Z")
    assert library["event"] == "Run time of job backup was missed" and library["logger"] == "apscheduler.scheduler"
    assert "hunter2" not in stream.getvalue() and other["level"] == "error"


def test_tracebacks_are_logged_as_text_without_frame_locals() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", secrets=[], stream=stream)
    password = "local-secret-value"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        structlog.get_logger("t").error("job.crashed", exc_info=True)
    (event,) = lines(stream)
    assert "RuntimeError: boom" in event["exception"]
    assert password not in stream.getvalue()


def test_apscheduler_chatter_is_hidden_unless_debug() -> None:
    stream = io.StringIO()
    logs.configure("info", "json", stream=stream)
    logging.getLogger("apscheduler.executors.default").info('Running job "backup"')
    assert stream.getvalue() == ""
    logs.configure("debug", "json", stream=stream)
    logging.getLogger("apscheduler.executors.default").info('Running job "backup"')
    assert lines(stream)[0]["event"] == 'Running job "backup"'


def test_what_a_command_prints_goes_through_scrub_and_the_streams_are_put_back() -> None:
    import sys

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        with logs.scrubbed_output(["pass word#1"]):
            print("restored into postgresql://u:pass word#1@db/app")
            print("unexpected ValueError: redis://:zz@cache:6379 and pass word#1", file=sys.stderr)
            assert sys.stdout.fileno  # the stream's other attributes are the real stream's
        assert (sys.stdout, sys.stderr) == (out, err)
    finally:
        sys.stdout, sys.stderr = saved
    assert out.getvalue() == "restored into postgresql://u:***@db/app\n"
    assert err.getvalue() == "unexpected ValueError: redis://:***@cache:6379 and ***\n"
