"""Fixtures for the Redis engine: private redis-server processes and a scratch directory per test."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis.servers import Server, fill, make_tls_files, redis_server


@pytest.fixture(params=[True, False], ids=["diskless", "disk"])
def filled_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server holding every data type in two databases, sending its snapshot diskless or from disk."""
    with redis_server(tmp_path / "source", diskless=request.param) as server:
        fill(server)
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls_files(tmp_path_factory.mktemp("tls"))
