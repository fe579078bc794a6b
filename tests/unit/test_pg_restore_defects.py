"""Guards against defects a review found (all fixed) in the sentence a failed pg_restore becomes
(jobs/engines/pg_restore.py: `restore_failure`, `extension_failure`): a password from the dump in the sentence,
the error lost behind a long statement, extension and lock-timeout text matched in the statement, an extension
name cut at a space, an unquoted GRANT. Each test names the defect it guards. The failure texts are pg_restore's
stderr from real runs (pg_restore 15 with the worker's options against PostgreSQL 15.20), passed through
`execute.run` as the worker keeps it (through `ErrorLines`, the last STDERR_LINES lines kept, joined by " | ")."""

import sys

import pytest

from jobs import execute
from jobs.engines.pg_restore import TARGET_URL, ErrorLines, restore_failure


def failure_of(stderr: str, kept_as_the_worker_keeps_it: bool = True) -> str:
    """Return the failure text the worker keeps of a pg_restore that wrote `stderr` and exited with 1: through the
    stderr filter `restore_database` gives pg_restore (`ErrorLines`), or, with `kept_as_the_worker_keeps_it`
    false, every line (the last STDERR_LINES), which `restore_failure` must read as safely."""
    completed = execute.run([sys.executable, "-c", "import sys; sys.stderr.write(sys.argv[1]); sys.exit(1)", stderr],
                            timeout=30, stderr_filter=ErrorLines() if kept_as_the_worker_keeps_it else None)
    assert completed.code == 1
    return completed.failure


BOTH_WAYS = pytest.mark.parametrize("filtered", [True, False], ids=["filtered", "unfiltered"])


# `restore --target-url` onto a server without the role a dumped user mapping is for (real run; the foreign
# server's password is the dump's content, not one of the worker's secrets, so nothing scrubs it).
USER_MAPPING = """pg_restore: error: could not execute query: ERROR:  role "reporting" does not exist
Command was: CREATE USER MAPPING FOR reporting SERVER warehouse OPTIONS (
    password 'S3cretFromTheDump',
    "user" 'remote'
);
"""

# A role without CREATE on schema public (PostgreSQL 15's default) restoring a table of 30 columns (real run).
WIDE = ("pg_restore: error: could not execute query: ERROR:  permission denied for schema public\n"
        "LINE 1: CREATE TABLE public.wide (\n"
        "                     ^\n"
        "Command was: CREATE TABLE public.wide (\n"
        + "".join(f"    column_number_{i} text{',' if i < 29 else ''}\n" for i in range(30))
        + ");\n\n\n")

# The same role restoring an app's function whose body mentions an extension (its own error message).
FUNCTION = """pg_restore: error: could not execute query: ERROR:  permission denied for schema public
Command was: CREATE FUNCTION public.require_postgis() RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'postgis') THEN
    RAISE EXCEPTION 'extension "postgis" is not available: ask the DBA';
  END IF;
END $$;
"""

# The same, for a function whose body mentions lock timeouts (its retry loop).
RETRYING = """pg_restore: error: could not execute query: ERROR:  permission denied for schema public
Command was: CREATE FUNCTION public.with_retry() RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  -- on a lock timeout, try again later
  PERFORM pg_sleep(1);
END $$;
"""


@BOTH_WAYS
def test_a_failed_restore_never_puts_a_password_from_the_dump_into_its_sentence(filtered: bool) -> None:
    """Defect: for any failure that is not a lock wait or an extension, the sentence is pg_restore's own words,
    "Command was:" and the failing statement included. pg_dump writes credentials into statements (a user
    mapping's `password` option, a subscription's CONNECTION string), and `scrub` knows only the worker's own
    secrets and URL passwords: the foreign server's password goes into the log, the run history and the alert
    webhook. The statement's option values should be withheld (or the statement cut to its head)."""
    sentence = restore_failure("app", "db:5432", failure_of(USER_MAPPING, filtered), user="restorer", elsewhere=TARGET_URL)
    assert "does not exist" in sentence
    assert "S3cretFromTheDump" not in sentence


def test_a_failed_restore_of_a_long_statement_still_names_the_error() -> None:
    """Defect: pg_restore writes the failing statement whole after its error, and the worker keeps only the last
    20 stderr lines, so for a statement longer than that (a wide CREATE TABLE, a function body) the sentence is
    the statement's tail and the error itself ("permission denied for schema public") is gone: the one line that
    says what to fix. The ERROR line should be kept whatever follows it."""
    sentence = restore_failure("app", "db:5432", failure_of(WIDE), user="restorer", elsewhere=TARGET_URL)
    assert "permission denied for schema public" in sentence


@BOTH_WAYS
def test_a_failure_whose_statement_mentions_an_extension_is_not_called_an_extension_failure(filtered: bool) -> None:
    """Defect: `extension_failure` searches its patterns anywhere in the failure text, the failing statement
    included. A function whose body says `extension "postgis" is not available` (an app's own check) failing for
    another reason becomes "the backup needs the PostgreSQL extension postgis, which the server does not have
    installed: install the package ...": the wrong cause and the wrong fix, and the real error dropped. Only the
    ERROR (and HINT/DETAIL) lines should be matched."""
    sentence = restore_failure("app", "db:5432", failure_of(FUNCTION, filtered), user="restorer", elsewhere=TARGET_URL)
    assert "permission denied for schema public" in sentence
    assert "needs the PostgreSQL extension" not in sentence


@BOTH_WAYS
def test_a_failure_whose_statement_mentions_a_lock_timeout_is_not_called_a_lock_wait(filtered: bool) -> None:
    """Defect: `restore_failure` takes any failure text containing "lock timeout" for a lock wait, the failing
    statement included: a function whose body mentions a lock timeout, failing for lack of a right, becomes "waited
    over 20 s for a lock ... held by another session ... stop the app's writers", and the real error is dropped."""
    sentence = restore_failure("app", "db:5432", failure_of(RETRYING, filtered), user="restorer", elsewhere=TARGET_URL)
    assert "permission denied for schema public" in sentence
    assert "waited over" not in sentence


def test_an_extension_whose_name_has_a_space_is_named_whole() -> None:
    """Defect: PostgreSQL writes `must be owner of extension %s` without quotes, and `_NOT_OWNER` stops at the
    first space, so an extension named `my ext` (a legal extension name) is reported as `my`."""
    failure = ("pg_restore exited with 1: pg_restore: error: could not execute query: ERROR:  must be owner of "
               'extension my ext | Command was: DROP EXTENSION IF EXISTS "my ext";')
    sentence = restore_failure("app", "db:5432", failure, user="restorer", elsewhere=TARGET_URL)
    assert "extension my ext," in sentence or 'extension "my ext"' in sentence


def test_the_grant_the_sentence_advises_names_the_role_and_database_it_means() -> None:
    """Defect: the advice `GRANT CREATE ON DATABASE {database} TO {user}` quotes neither name. For a role `Deploy`
    (or a database `My-App`) PostgreSQL folds or rejects the unquoted names: the command fails, or grants the
    right to another role (`deploy`) that happens to exist."""
    failure = ("pg_restore exited with 1: pg_restore: error: could not execute query: ERROR:  permission denied to "
               'create extension "hstore" | HINT:  Must have CREATE privilege on current database to create this '
               "extension. | Command was: CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA public;")
    sentence = restore_failure("My-App", "db:5432", failure, user="Deploy", elsewhere=TARGET_URL)
    assert 'GRANT CREATE ON DATABASE "My-App" TO "Deploy"' in sentence


# A COPY into a table whose check constraint the data breaks (real wording of PostgreSQL 15): the DETAIL line
# carries the row itself, and a unique violation carries the key's value.
ROW_DETAIL = """pg_restore: error: COPY failed for table "accounts": ERROR:  new row for relation "accounts" violates check constraint "accounts_pin_check"
DETAIL:  Failing row contains (7, ada@example.com, S3cretRowValue).
CONTEXT:  COPY accounts, line 1: "7	ada@example.com	S3cretRowValue"
"""
KEY_DETAIL = """pg_restore: error: could not execute query: ERROR:  could not create unique index "users_email_key"
DETAIL:  Key (email)=(S3cretKeyValue@example.com) is duplicated.
Command was: ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_email_key UNIQUE (email);
"""


@pytest.mark.parametrize("stderr, secret, error", [
    (ROW_DETAIL, "S3cretRowValue", "violates check constraint"),
    (KEY_DETAIL, "S3cretKeyValue", "could not create unique index"),
])
@BOTH_WAYS
def test_a_failed_restore_never_puts_the_dumps_row_values_into_its_sentence(stderr: str, secret: str, error: str,
                                                                            filtered: bool) -> None:
    """The server's DETAIL line of a constraint error holds the dump's data ("Failing row contains (…)", "Key
    (email)=(…)"); the sentence goes to the log, the history and the webhook, so it keeps the error, never the row."""
    sentence = restore_failure("app", "db:5432", failure_of(stderr, filtered), user="restorer", elsewhere=TARGET_URL)
    assert error in sentence
    assert secret not in sentence
