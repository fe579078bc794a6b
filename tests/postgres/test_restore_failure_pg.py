"""What a failed pg_restore's sentence keeps, from real runs of pg_restore against the suite's server
(jobs/engines/pg_restore.py: `restore_database` gives pg_restore's stderr the `ErrorLines` filter): the server's
error, and of the failing statement only its head; never the dump's content, such as a user mapping's password,
and never a statement so long that the error falls out of the kept lines."""

import subprocess
from pathlib import Path
import threading

import pytest

from jobs.engines import pg_connect, pg_tools
from jobs.engines.pg_restore import restore_database
from jobs.errors import SourceError
from tests.postgres.conftest import admin, drop_role, unique, url_for

SECRET = "S3cretFromTheDump"


def dump(dbname: str, out: Path) -> Path:
    tools = pg_tools.newest(pg_tools.bin_dir())
    subprocess.run([str(tools.pg_dump), "--format=custom", f"--file={out}", url_for(dbname)], check=True)
    return out


def failed_restore(raw: Path, url: str) -> str:
    with pytest.raises(SourceError) as failed:
        restore_database(raw, pg_connect.parse_url(url), threading.Event(), None)
    sentence = str(failed.value)
    assert "\n" not in sentence and "rolled back" in sentence
    return sentence


def test_a_user_mapping_that_fails_to_restore_does_not_put_its_password_in_the_sentence(make_db, tmp_path) -> None:
    source, target = make_db("umsrc"), make_db("umdst")
    role = unique("mapped")  # dropped before the restore: not make_role's
    with admin() as connection:
        connection.execute(f"CREATE ROLE {role}")
    try:
        with admin(dbname=source) as connection:
            connection.execute("CREATE EXTENSION postgres_fdw")
            connection.execute("CREATE SERVER warehouse FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'warehouse', dbname 'w')")
            connection.execute(f"CREATE USER MAPPING FOR {role} SERVER warehouse OPTIONS (user 'remote', password '{SECRET}')")
        raw = dump(source, tmp_path / "um.dump")
    finally:  # the target's server has no such role any more
        drop_role(role)
    sentence = failed_restore(raw, url_for(target))
    assert f'role "{role}" does not exist' in sentence and f"Command was: CREATE USER MAPPING FOR {role} …" in sentence
    assert SECRET not in sentence and "OPTIONS" not in sentence


def test_a_long_statement_that_fails_to_restore_leaves_its_error_in_the_sentence(make_db, make_role, tmp_path) -> None:
    source, target = make_db("widesrc"), make_db("widedst")
    columns = ", ".join(f"column_number_{i} text" + (f" DEFAULT '{SECRET}'" if i == 29 else "") for i in range(30))
    with admin(dbname=source) as connection:
        connection.execute(f"CREATE TABLE wide ({columns})")
    raw = dump(source, tmp_path / "wide.dump")
    role = make_role("nocreate")  # may connect, may not create in the target's schema public (PostgreSQL 15 on)
    sentence = failed_restore(raw, url_for(target, user=role))
    assert "ERROR:  permission denied for schema public | Command was: CREATE TABLE public.wide …" in sentence
    assert SECRET not in sentence and "column_number" not in sentence and "LINE 1" not in sentence
