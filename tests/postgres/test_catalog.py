"""CATALOG_URL on PostgreSQL: SQLAlchemy with psycopg 3 creates the run history table and records runs."""

from datetime import datetime, timezone

from jobs.engines.postgres import catalog_url
from worker.catalog import open_catalog

from tests.postgres.conftest import admin, url_for


def test_postgresql_catalog_urls_use_psycopg_3_whatever_driver_they_name_and_others_are_left_alone():
    assert catalog_url("postgresql://u:p@h:5432/db?sslmode=require") == "postgresql+psycopg://u:p@h:5432/db?sslmode=require"
    assert catalog_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert catalog_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg://u@h/db"  # the driver the worker has
    assert catalog_url("sqlite:////data/catalog.db") == "sqlite:////data/catalog.db"


def test_a_catalog_on_a_fresh_postgresql_database_gets_its_table_and_records_runs(make_db):
    dbname = make_db("catalog")
    catalog = open_catalog(catalog_url(url_for(dbname)))
    assert catalog.engine is not None and catalog.engine.driver == "psycopg"
    with admin(dbname=dbname) as connection:
        tables = [row[0] for row in connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert tables == ["runs"]
    catalog.start("run1", "backup", datetime.now(timezone.utc))
    catalog.finish("run1", "succeeded", 1.5, fields={"artifact": "app-20260101T000000Z.pgdump.zst", "size": 10})
    last = catalog.last_runs()
    assert last["backup"]["outcome"] == "succeeded" and last["backup"]["size"] == 10
    catalog.engine.dispose()
    again = open_catalog(catalog_url(url_for(dbname)))  # an existing table is kept
    assert again.last_runs()["backup"]["run_id"] == "run1"
    again.engine.dispose()
