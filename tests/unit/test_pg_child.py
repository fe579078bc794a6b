"""What a pg_dump or pg_restore child gets (pg_connect.for_child) and the sentence a failed restore becomes
(pg_restore.restore_failure), with tables of cases."""

import pytest

from jobs.engines import pg_connect
from jobs.engines.pg_restore import IDLE_IN_TRANSACTION, TARGET_URL, Elsewhere, ErrorLines, restore_failure, statement_head

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


# pg_restore's failure texts as the worker keeps them (`execute`: "pg_restore exited with 1: " and the stderr lines
# joined by " | "), copied from real runs of pg_restore 15 (--clean --if-exists --no-owner --no-acl --exit-on-error
# --single-transaction) against PostgreSQL 15.20, except OLD_MISSING (see there).
_RUN = "pg_restore exited with 1: pg_restore: error: could not execute query: ERROR:  "
# A role with LOGIN CREATEDB restoring a dump with dblink (untrusted) into a database it created.
UNTRUSTED = (_RUN + 'permission denied to create extension "dblink" | HINT:  Must be superuser to create this '
             "extension. | Command was: CREATE EXTENSION IF NOT EXISTS dblink WITH SCHEMA public;")
# The same role restoring a dump with hstore (trusted) into a database where it lacks the CREATE right.
TRUSTED = (_RUN + 'permission denied to create extension "hstore" | HINT:  Must have CREATE privilege on current '
           "database to create this extension. | Command was: CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA public;")
# The same role restoring over a database in which a superuser created dblink (--clean drops it first).
NOT_OWNER = _RUN + "must be owner of extension dblink | Command was: DROP EXTENSION IF EXISTS dblink;"
# A superuser restoring into a server without dblink.control (a private cluster run from a copy of the PostgreSQL 15
# installation with dblink's files removed; the copy's path replaced by the packaged one).
MISSING = (_RUN + 'extension "dblink" is not available | DETAIL:  Could not open extension control file '
           '"/usr/share/postgresql/15/extension/dblink.control": No such file or directory. | HINT:  The extension '
           "must first be installed on the system where PostgreSQL is running. | Command was: CREATE EXTENSION IF NOT "
           "EXISTS dblink WITH SCHEMA public;")
# PostgreSQL before 15 words a missing control file so (`errmsg("could not open extension control file \"%s\": %m")`
# in parse_extension_control_file): written from that source, not copied from a run.
OLD_MISSING = (_RUN + 'could not open extension control file "/usr/share/postgresql/14/extension/postgis.control": '
               "No such file or directory | Command was: CREATE EXTENSION IF NOT EXISTS postgis WITH SCHEMA public;")
OTHER = _RUN + 'relation "users" does not exist | Command was: ALTER TABLE ONLY public.users ADD CONSTRAINT users_pkey;'
DRILL = Elsewhere("set DRILL_TARGET_URL to", "an empty database")
HEAD = "pg_restore into app on db:5432 failed and its transaction was rolled back, so the database is unchanged: "
AS_SUPERUSER = "to restore as a superuser, use --target-url with a superuser's URL of a database"
DRILL_AS_SUPERUSER = "to restore as a superuser, set DRILL_TARGET_URL to a superuser's URL of an empty database"
INSTALL = ("install the package that provides it on that server (postgresql-contrib for the contrib extensions, such as "
           "dblink or hstore) and try again, or ")


@pytest.mark.parametrize(
    "failure, user, elsewhere, cause",
    [
        (UNTRUSTED, "app", TARGET_URL,
         "the backup needs the PostgreSQL extension dblink, which the role app may not create on db:5432 (it is not a "
         f"trusted extension: only a superuser may create it); {AS_SUPERUSER}"),
        (UNTRUSTED, "app", DRILL,
         "the backup needs the PostgreSQL extension dblink, which the role app may not create on db:5432 (it is not a "
         f"trusted extension: only a superuser may create it); {DRILL_AS_SUPERUSER}"),
        (UNTRUSTED, "", TARGET_URL,
         "the backup needs the PostgreSQL extension dblink, which the restoring role may not create on db:5432 (it is "
         f"not a trusted extension: only a superuser may create it); {AS_SUPERUSER}"),
        (TRUSTED, "app", DRILL,
         "the backup needs the PostgreSQL extension hstore, which the role app may not create without the CREATE right "
         f"on the database app: grant it with `GRANT CREATE ON DATABASE app TO app`, or, {DRILL_AS_SUPERUSER}"),
        (NOT_OWNER, "app", TARGET_URL,
         "the restore drops the PostgreSQL extension dblink and creates it again, but the role app does not own it in "
         f"app (another role, usually a superuser, created it); {AS_SUPERUSER}"),
        (MISSING, "app", DRILL,
         "the backup needs the PostgreSQL extension dblink, which the server at db:5432 does not have installed: "
         f"{INSTALL}set DRILL_TARGET_URL to the URL of an empty database on a server that has it"),
        (OLD_MISSING, "app", TARGET_URL,
         "the backup needs the PostgreSQL extension postgis, which the server at db:5432 does not have installed: "
         f"{INSTALL}use --target-url with the URL of a database on a server that has it"),
        (TRUSTED, "", TARGET_URL,  # the role is not known: no SQL with a placeholder in it
         "the backup needs the PostgreSQL extension hstore, which the restoring role may not create without the CREATE "
         "right on the database app: grant that right to the role the restore connects as, or, "
         f"{AS_SUPERUSER}"),
        (NOT_OWNER.replace("dblink", "my ext", 1).replace("dblink", '"my ext"'), "app", TARGET_URL,
         'the restore drops the PostgreSQL extension "my ext" and creates it again, but the role app does not own it in '
         f"app (another role, usually a superuser, created it); {AS_SUPERUSER}"),
        # not an extension: pg_restore's own words, of the statement only its head
        (OTHER, "app", DRILL, _RUN + 'relation "users" does not exist | Command was: ALTER TABLE ONLY public.users …'),
    ],
)
def test_a_restore_that_fails_on_an_extension_names_it_and_the_fix_in_one_sentence(
        failure: str, user: str, elsewhere: Elsewhere, cause: str) -> None:
    assert restore_failure("app", "db:5432", failure, user=user, elsewhere=elsewhere) == HEAD + cause


@pytest.mark.parametrize("name, quoted", [
    ("app", "app"), ("app_2$", "app_2$"), ("_x", "_x"),
    ("Deploy", '"Deploy"'), ("My-App", '"My-App"'), ("my app", '"my app"'), ("2fa", '"2fa"'), ("café", '"café"'),
    ("user", '"user"'), ("left", '"left"'), ('a"b', '"a""b"'), ("", '""'),
])
def test_quote_ident_leaves_plain_lower_case_names_bare_and_quotes_the_rest(name: str, quoted: str) -> None:
    assert pg_connect.quote_ident(name) == quoted


@pytest.mark.parametrize("statement, head", [
    ("CREATE TABLE public.wide (", "CREATE TABLE public.wide"),
    ("CREATE USER MAPPING FOR reporting SERVER warehouse OPTIONS (", "CREATE USER MAPPING FOR reporting"),
    ("CREATE SUBSCRIPTION sub CONNECTION 'host=h password=s3cret' PUBLICATION p WITH (connect = false);",
     "CREATE SUBSCRIPTION sub"),
    ("DROP TABLE IF EXISTS public.users;", "DROP TABLE IF EXISTS public.users"),
    ('DROP EXTENSION IF EXISTS "my ext";', 'DROP EXTENSION IF EXISTS "my ext"'),
    ('ALTER TABLE ONLY "Sales"."Order ""x""" ADD CONSTRAINT k PRIMARY KEY (id);', 'ALTER TABLE ONLY "Sales"."Order ""x"""'),
    ("SELECT pg_catalog.set_config('search_path', '', false);", "SELECT pg_catalog.set_config"),
    ("COPY public.events (id, kind) FROM stdin;", "COPY public.events"),
    ("    password 'S3cret',", ""),  # not a statement's start
    ("'S3cret'", ""),
])
def test_a_statements_head_is_its_key_words_and_the_name_after_them_never_a_value(statement: str, head: str) -> None:
    assert statement_head(statement) == head


def test_of_pg_restores_stderr_only_its_error_lines_and_the_failing_statements_head_are_kept() -> None:
    stderr = ["pg_restore: error: could not execute query: ERROR:  syntax error at or near \"OPTIONS\"",
              "LINE 1: CREATE USER MAPPING FOR reporting SERVER warehouse OPTIONS (password 'S3cret'...",
              "                                                           ^",
              "HINT:  a hint", "DETAIL:  a detail", "CONTEXT:  COPY events, line 1: \"S3cret\"", "QUERY:  SELECT 'S3cret'",
              "Command was: CREATE USER MAPPING FOR reporting SERVER warehouse OPTIONS (", "    password 'S3cret',",
              "ERROR:  inside the statement (a function's body): dropped", ");",
              "pg_restore: detail: Query was: SELECT 'S3cret'", "WARNING:  after a query: still its text",
              "pg_restore: warning: errors ignored on restore: 1"]
    keep = ErrorLines()
    assert [kept for line in stderr if (kept := keep(line))] == [
        stderr[0], "HINT:  a hint", "DETAIL:  a detail", "Command was: CREATE USER MAPPING FOR reporting …",
        "Command was: SELECT …", stderr[-1]]
