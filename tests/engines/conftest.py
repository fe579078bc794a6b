"""The engine suite's fixtures: PostgreSQL databases come from the PostgreSQL tests' fixture."""

from tests.postgres.conftest import make_db

__all__ = ["make_db"]
