"""Connection settings from URLs and connection failures told in one sentence, without the password."""

import pytest

from jobs.engines import pg_connect, postgres
from jobs.errors import SourceError

from tests.postgres.conftest import HOST, PORT, free_port, url_for


def test_the_password_is_kept_apart_from_the_conninfo_and_the_masked_url():
    conn = pg_connect.parse_url("postgresql://app:p%40ss%3Aw0rd@db.example.com:6543/shop?sslmode=require&application_name=web")
    assert conn.password == "p@ss:w0rd"
    assert "p@ss" not in conn.conninfo() and "password" not in conn.conninfo()
    assert conn.masked == "postgresql://app:***@db.example.com:6543/shop?sslmode=require&application_name=web"
    assert "p@ss" not in repr(conn)
    assert conn.params["sslmode"] == "require" and conn.params["application_name"] == "web"
    assert (conn.dbname, conn.host, conn.user) == ("shop", "db.example.com:6543", "app")
    assert conn.env()["PGPASSWORD"] == "p@ss:w0rd"


def test_query_parameters_reach_the_conninfo_and_a_default_connect_timeout_is_added():
    conn = pg_connect.parse_url("postgres://u@h/d?options=-c%20statement_timeout%3D0&sslrootcert=/etc/ca.pem")
    info = conn.conninfo()
    assert "options='-c statement_timeout=0'" in info and "sslrootcert=/etc/ca.pem" in info
    assert "connect_timeout=10" in info
    given = pg_connect.parse_url("postgresql://u@h/d?connect_timeout=3")
    assert given.params["connect_timeout"] == "3"


def test_a_password_given_as_a_query_parameter_is_taken_out_too():
    conn = pg_connect.parse_url("postgresql://u@h/d?password=qu3ry-secret")
    assert conn.password == "qu3ry-secret" and "qu3ry-secret" not in conn.conninfo()
    assert "qu3ry-secret" not in conn.masked


def test_an_sslpassword_is_refused_because_it_could_only_go_on_a_command_line():
    with pytest.raises(ValueError, match="sslpassword"):
        pg_connect.parse_url("postgresql://u@h/d?sslpassword=x")


def test_a_url_libpq_rejects_is_a_value_error_without_the_password():
    with pytest.raises(ValueError) as caught:
        pg_connect.parse_url("postgresql://u:hunter22@h/d?nosuchoption=1")
    assert "hunter22" not in str(caught.value) and "nosuchoption" in str(caught.value)


def test_source_names_come_from_the_database_name():
    assert postgres.open_source("postgresql://u:p@h/my.app%20db", None).name() == "my-app-db"
    assert postgres.open_source("postgresql://railway_user:p@h:5432/railway", None).name() == "railway"
    source = postgres.open_source("postgres://u:secret-pw@h:5432/shop", None)
    assert source.describe() == {"kind": "pgdump", "database": "shop", "host": "h:5432"}
    assert "secret-pw" not in source.target() + repr(source)


def test_an_unreachable_server_is_one_sentence_naming_host_and_fix():
    port = free_port()
    source = postgres.open_source(url_for("postgres", password="s3cret-pw", port=port), None)
    with pytest.raises(SourceError) as caught:
        source.estimate_size()
    message = str(caught.value)
    assert message == (f"cannot connect to PostgreSQL at {HOST}:{port}: connection refused; check the host and port "
                       "in the URL and that the server is running")


def test_a_missing_database_says_so_and_how_to_create_it():
    source = postgres.open_source(url_for("bw_no_such_db_0000"), None)
    with pytest.raises(SourceError) as caught:
        source.estimate_size()
    assert str(caught.value) == (f"the database bw_no_such_db_0000 does not exist on {HOST}:{PORT}; check the database "
                                 "name at the end of the URL, or create it (createdb bw_no_such_db_0000)")


def test_a_wrong_password_is_refused_in_one_sentence_without_the_password(password_server):
    source = postgres.open_source(password_server.url("postgres", password="wr0ng-pass"), None)
    with pytest.raises(SourceError) as caught:
        source.estimate_size()
    message = str(caught.value)
    assert "refused the password of user postgres" in message and "wr0ng-pass" not in message and "\n" not in message


def test_a_missing_password_says_the_url_needs_one(password_server):
    source = postgres.open_source(f"postgresql://postgres@127.0.0.1:{password_server.port}/postgres", None)
    with pytest.raises(SourceError, match="asks user postgres for a password and the URL has none"):
        source.estimate_size()


def test_the_size_estimate_is_the_database_size(app_pg):
    assert postgres.open_source(url_for(app_pg), None).estimate_size() > 1 << 20


def test_a_host_that_does_not_resolve_is_named():
    source = postgres.open_source("postgresql://u:p@no-such-host.invalid/db", None)
    with pytest.raises(SourceError, match=r"the host name in the URL \(no-such-host.invalid\) does not resolve"):
        source.estimate_size()


def test_a_password_equal_to_the_user_and_database_name_still_backs_up(password_server, tmp_path):
    """postgres:postgres@…/postgres is common in development; the secret guard must not take it for a slip."""
    from psycopg import sql

    from tests.postgres.conftest import admin, backup_to_file, drop_database

    name = "bw_same_name"
    su = password_server.superuser_password
    with admin(password_server.port, su) as connection:
        connection.execute(sql.SQL("CREATE ROLE {0} LOGIN PASSWORD {1}").format(sql.Identifier(name), sql.Literal(name)))
        connection.execute(sql.SQL("CREATE DATABASE {0} OWNER {0}").format(sql.Identifier(name)))
    try:
        source = postgres.open_source(password_server.url(name, user=name, password=name), tmp_path)
        assert backup_to_file(source, tmp_path / "out", tmp_path) == "pg_restore read every block"
    finally:
        drop_database(name, password_server.port, su)
        with admin(password_server.port, su) as connection:
            connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
