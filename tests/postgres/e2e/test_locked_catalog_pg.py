"""A PostgreSQL catalog whose table another session keeps locked never holds a backup up: each access waits a
couple of seconds at most (lock_timeout), then the run goes on with a warning."""

import time

import pytest

from tests.postgres.conftest import url_for
from tests.postgres.e2e.test_bound_children import app_in_transaction
from worker.catalog import BUSY_S, STATEMENT_S, _connect_args


def test_a_locked_postgresql_catalog_delays_a_backup_by_seconds_at_most(app_pg, make_db, tmp_path, cli) -> None:
    from tests.postgres.e2e.conftest import base_env

    catalog_db = make_db("catalog")
    env = base_env(tmp_path, url_for(app_pg), CATALOG_URL=url_for(catalog_db))
    assert cli("backup", env=env).code == 0  # the table exists
    with app_in_transaction(catalog_db, "LOCK TABLE runs IN ACCESS EXCLUSIVE MODE"):
        began = time.monotonic()
        result = cli("backup", env=env, timeout=120)
        took = time.monotonic() - began
    assert result.code == 0, result.stderr
    assert took < 10, f"the backup took {took:.1f} s behind a locked catalog"
    warnings = [e for e in result.events if e.get("level") == "warning" and e["event"].startswith("catalog.")]
    assert warnings and "lock timeout" in " ".join(str(e.get("detail", "")) for e in warnings)


@pytest.mark.parametrize(
    "backend, query, expected",
    [
        ("sqlite", {}, {"timeout": BUSY_S}),
        ("postgresql", {}, {"connect_timeout": 10, "options": f"-c lock_timeout={BUSY_S * 1000} -c statement_timeout={STATEMENT_S * 1000}"}),
        ("postgresql", {"connect_timeout": "3"}, {"options": f"-c lock_timeout={BUSY_S * 1000} -c statement_timeout={STATEMENT_S * 1000}"}),
        ("postgresql", {"options": "-c search_path=history"}, {"connect_timeout": 10}),  # the URL's own options win
        ("mysql", {}, {}),
    ],
)
def test_every_catalog_wait_is_bounded_unless_the_url_says_otherwise(backend: str, query: dict, expected: dict) -> None:
    assert _connect_args(backend, query) == expected
