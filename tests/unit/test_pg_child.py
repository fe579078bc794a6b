"""What a pg_dump or pg_restore child gets (pg_connect.for_child) and the sentence a failed restore becomes
(pg_restore.restore_failure), with tables of cases."""

import pytest

from jobs.engines import pg_connect
from jobs.engines.pg_restore import IDLE_IN_TRANSACTION, restore_failure

CHECK = "-c client_connection_check_interval=1000"


@pytest.mark.parametrize(
    "url, worker_pgoptions, server, settings, pgoptions",
    [
        ("postgresql://u@h/db", None, "15.20", None, CHECK),
        ("postgresql://u@h/db", None, "14.0", None, CHECK),
        ("postgresql://u@h/db", None, "13.16", None, None),  # no such setting before 14: nothing to send
        ("postgresql://u@h/db", None, "9.6.24", None, None),
        ("postgresql://u@h/db", "-c search_path=app", "15.20", None, f"-c search_path=app {CHECK}"),
        ("postgresql://u@h/db?options=-c%20search_path%3Dapp", "-c work_mem=1MB", "15.20", None, f"-c search_path=app {CHECK}"),
        ("postgresql://u@h/db", None, "15.20", {"lock_timeout": "20s"}, f"-c lock_timeout=20s {CHECK}"),
        ("postgresql://u@h/db", None, "12.1", {"lock_timeout": "20s"}, "-c lock_timeout=20s"),
    ],
)
def test_a_child_gets_its_session_settings_in_pgoptions_never_on_its_command_line(
        monkeypatch, url: str, worker_pgoptions: str | None, server: str, settings: dict | None, pgoptions: str | None) -> None:
    if worker_pgoptions is None:
        monkeypatch.delenv("PGOPTIONS", raising=False)
    else:
        monkeypatch.setenv("PGOPTIONS", worker_pgoptions)
    conninfo, env = pg_connect.for_child(pg_connect.parse_url(url), server, settings)
    assert env.get("PGOPTIONS") == pgoptions
    assert "options" not in conninfo and "client_connection_check" not in conninfo and "lock_timeout" not in conninfo
    assert "dbname=db" in conninfo


def test_the_password_goes_to_the_environment_only() -> None:
    conninfo, env = pg_connect.for_child(pg_connect.parse_url("postgresql://u:s3cret@h/db"), "15.2")
    assert env["PGPASSWORD"] == "s3cret" and "s3cret" not in conninfo


@pytest.mark.parametrize("server, major", [("15.20", 15), ("9.6.24", 9), ("16beta1", 16), ("17.0 (Debian)", 17), ("", 0)])
def test_server_major(server: str, major: int) -> None:
    assert pg_connect.server_major(server) == major


CANCELLED = ("pg_restore exited with 1: pg_restore: error: could not execute query: ERROR:  canceling statement due to "
             "user request | Command was: DROP TABLE IF EXISTS public.users;")
TIMEOUT = CANCELLED.replace("user request", "lock timeout")


@pytest.mark.parametrize(
    "failure, holders, expected, absent",
    [
        (CANCELLED, "pid 42, idle in transaction, application web",
         ["waited over 20 s for a lock for DROP TABLE IF EXISTS public.users held by another session "
          "(pid 42, idle in transaction, application web)", IDLE_IN_TRANSACTION, "stop the app's writers", "unchanged"],
         ["canceling"]),
        (TIMEOUT, None, ["for a lock for DROP TABLE IF EXISTS public.users held by another session, so", IDLE_IN_TRANSACTION], []),
        ("pg_restore exited with 1: pg_restore: error: could not execute query: ERROR:  cannot drop table users",
         None, ["failed and its transaction was rolled back, so the database is unchanged: pg_restore exited with 1"],
         [IDLE_IN_TRANSACTION]),
    ],
)
def test_a_failed_restore_is_one_sentence_and_a_lock_wait_names_the_statement_the_holder_and_the_fix(
        failure: str, holders: str | None, expected: list[str], absent: list[str]) -> None:
    sentence = restore_failure("app", "db:5432", failure, holders)
    assert sentence.startswith("pg_restore into app on db:5432 ")
    for part in expected:
        assert part in sentence
    for part in absent:
        assert part not in sentence
    assert "\n" not in sentence
