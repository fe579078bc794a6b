"""SQLAlchemy URLs (`dialect+driver://`) name the same database as the plain URL: the driver part is ignored, in
one place (jobs.engines.open_source), and everything that reads the source URL goes through it."""

from pathlib import Path

import pytest

from jobs import engines
from jobs.engines.postgres import catalog_url
from jobs.purge.database import sql_database
from worker.config import load_config
from worker import preflight

SQLITE_FORMS = ["sqlite+aiosqlite", "sqlite+pysqlite", "SQLite+PySQLite"]
PG_FORMS = ["postgresql+psycopg", "postgresql+psycopg2", "postgresql+asyncpg", "postgres"]


@pytest.mark.parametrize("scheme", SQLITE_FORMS)
def test_a_sqlite_url_with_a_driver_opens_the_same_file(scheme: str, tmp_path: Path) -> None:
    plain = engines.open_source("sqlite:///data/app.db", tmp_path)
    opened = engines.open_source(f"{scheme}:///data/app.db", tmp_path)
    assert opened == plain and opened.path == tmp_path / "data" / "app.db"
    assert engines.open_source(f"{scheme}:////abs/app.db?check_same_thread=false", tmp_path).path == Path("/abs/app.db")


@pytest.mark.parametrize("scheme", PG_FORMS)
def test_a_postgresql_url_with_a_driver_connects_where_the_plain_one_does(scheme: str, tmp_path: Path) -> None:
    plain = engines.open_source("postgresql://app:pw@db.internal:6543/shop?sslmode=require", tmp_path)
    opened = engines.open_source(f"{scheme}://app:pw@db.internal:6543/shop?sslmode=require", tmp_path)
    assert opened.kind == "pgdump" and opened.conn.params == plain.conn.params
    assert opened.conn.password == "pw" and "pw" not in opened.target()
    assert sql_database(f"{scheme}://app:pw@db.internal:6543/shop?sslmode=require").params == sql_database(plain).params


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql+asyncpg://u@h/db", "postgresql://u@h/db"),
    ("postgresql+psycopg2://u@h/db", "postgresql://u@h/db"),
    ("sqlite+aiosqlite:///./app.db", "sqlite:///./app.db"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_the_driver_part_is_taken_off_in_one_place(url: str, expected: str) -> None:
    assert engines.source_url(url) == expected


@pytest.mark.parametrize(("query", "sslmode"), [
    ("ssl=true", "require"), ("ssl=True", "require"), ("ssl=false", "disable"), ("ssl=require", "require"),
    ("ssl=verify-full", "verify-full"), ("ssl=disable", "disable"), ("ssl=prefer&sslmode=verify-ca", "verify-ca"),
])
def test_asyncpg_s_ssl_parameter_is_libpq_s_sslmode(query: str, sslmode: str, tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://app:pw@db.internal:6543/shop?application_name=a%20b&{query}"
    written = engines.source_url(url)
    assert "ssl=" not in written.replace("sslmode=", "") and written.count("sslmode=") == 1
    assert written.startswith("postgresql://app:pw@db.internal:6543/shop?application_name=a%20b&")
    opened = engines.open_source(url, tmp_path)
    assert opened.conn.params["sslmode"] == sslmode
    assert sql_database(url).params["sslmode"] == sslmode


def test_ssl_means_nothing_special_to_other_drivers() -> None:
    assert engines.source_url("postgresql+psycopg://u@h/db?ssl=true") == "postgresql://u@h/db?ssl=true"


@pytest.mark.parametrize("url", ["mysql+pymysql://u@h/db", "postgresql+://u@h/db", "+psycopg://u@h/db",
                                 "postgresql+psy/copg://u@h/db"])
def test_a_url_of_no_engine_or_a_malformed_driver_is_refused_naming_the_forms(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must start with"):
        engines.open_source(url, tmp_path)


@pytest.mark.parametrize("variable", ["BACKUP_SOURCE", "DATABASE_URL"])
@pytest.mark.parametrize("scheme", SQLITE_FORMS[:2])
def test_config_accepts_sqlalchemy_sqlite_urls_and_names_the_set_after_the_file(variable: str, scheme: str, tmp_path: Path) -> None:
    config = load_config({variable: f"{scheme}:///app.db", "BACKUP_DIR": str(tmp_path / "b")}, tmp_path)
    assert [spec.name for spec in config.sources] == ["app"]
    assert config.protected_files[0] == tmp_path / "app.db"


def test_preflight_looks_at_a_postgresql_source_written_with_a_driver(tmp_path: Path) -> None:
    config = load_config({"DATABASE_URL": "postgresql+asyncpg://u:pw-x@127.0.0.1:1/db", "BACKUP_DIR": str(tmp_path / "b")},
                         tmp_path)
    (problem,) = preflight.problems(config)
    assert "127.0.0.1:1" in problem and "pw-x" not in problem


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql+asyncpg://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
    ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ("sqlite+aiosqlite:////data/catalog.db", "sqlite:////data/catalog.db"),
    ("sqlite+pysqlite:////data/catalog.db", "sqlite:////data/catalog.db"),
    ("mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db"),
])
def test_a_catalog_url_copied_from_the_app_opens_with_the_drivers_the_worker_has(url: str, expected: str) -> None:
    assert catalog_url(url) == expected
