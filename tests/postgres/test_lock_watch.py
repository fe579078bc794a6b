"""The lock watch (jobs/engines/pg_watch.py) against the real server: a session of ours that waits for a lock
longer than the limit has its statement cancelled and the holder named; a session that does not wait, or waits
less, is left alone, and the app's session is never touched."""

import threading
import time

import psycopg
import pytest

from jobs.engines import pg_connect, pg_watch
from tests.postgres.conftest import url_for


def session(dbname: str, name: str, autocommit: bool = False) -> psycopg.Connection:
    return psycopg.connect(url_for(dbname), application_name=name, autocommit=autocommit)


@pytest.mark.parametrize("holds_for, limit, cancelled", [(10.0, 1.0, True), (0.3, 3.0, False)])
def test_a_session_waiting_longer_than_the_limit_is_cancelled_and_the_holder_named(make_db, holds_for, limit, cancelled) -> None:
    db = make_db("watch")
    with session(db, "setup", autocommit=True) as setup:
        setup.execute("CREATE TABLE t (id int)")
    app = session(db, "the-app")
    app.execute("SELECT count(*) FROM t")  # idle in transaction, holding ACCESS SHARE on t
    releaser = threading.Timer(holds_for, app.rollback)
    releaser.start()
    outcome: dict = {}
    try:
        with session(db, "ours-restore-x", autocommit=True) as ours, \
                pg_watch.watching(pg_connect.parse_url(url_for(db)), "ours-restore-x", limit) as watch:
            began = time.monotonic()
            try:
                ours.execute("DROP TABLE t")
                outcome["result"] = "done"
            except psycopg.errors.QueryCanceled:
                outcome["result"] = "cancelled"
            outcome["took"] = time.monotonic() - began
    finally:
        releaser.cancel()
        alive = app.execute("SELECT 1").fetchone() == (1,)  # the app's session still works
        app.close()
    assert alive
    if cancelled:
        assert outcome["result"] == "cancelled" and outcome["took"] < limit + 2
        assert watch.cancelled and watch.holders.startswith("pid ") and "idle in transaction, application the-app" in watch.holders
    else:
        assert outcome["result"] == "done" and not watch.cancelled


def test_a_watch_that_cannot_connect_only_warns() -> None:
    unreachable = pg_connect.parse_url("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pg_watch.watching(unreachable, "ours", 1.0) as watch:
        pass
    assert not watch.cancelled
