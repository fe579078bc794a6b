"""rediss:// against a real TLS redis-server with a test CA: certificates verified by default."""

from pathlib import Path

import pytest

from jobs.engines import redis as engine, redis_wire
from jobs.errors import SourceError
from tests.redis.servers import PASSWORD, fill, redis_server, take


def test_a_tls_server_is_snapshotted_when_its_ca_is_given(tmp_path: Path, tls_files: Path) -> None:
    with redis_server(tmp_path / "source", password=PASSWORD, tls_files=tls_files) as server:
        fill(server)
        url = server.url(f"default:{PASSWORD}@", f"ssl_ca_certs={tls_files / 'ca.crt'}")
        taken = take(engine.open_source(url, tmp_path), tmp_path / "dump.rdb")
        assert taken.verified == "RDB header and CRC64"
        assert taken.details["rdb"]["keys"]["db0"] == server.client(0).dbsize()


def test_an_unknown_certificate_is_refused_with_the_two_ways_out(tmp_path: Path, tls_files: Path) -> None:
    with redis_server(tmp_path / "source", tls_files=tls_files) as server:
        with pytest.raises(SourceError) as caught:
            take(engine.open_source(server.url(), tmp_path), tmp_path / "dump.rdb")
        message = str(caught.value)
        assert "could not be verified" in message and "ssl_ca_certs=" in message and "ssl_cert_reqs=none" in message
        assert not list(tmp_path.glob("dump.rdb*"))


def test_ssl_cert_reqs_none_accepts_any_certificate(tmp_path: Path, tls_files: Path) -> None:
    with redis_server(tmp_path / "source", tls_files=tls_files) as server:
        server.client().set("k", "v")
        taken = take(engine.open_source(server.url(query="ssl_cert_reqs=none"), tmp_path), tmp_path / "dump.rdb")
        assert taken.details["rdb"]["keys"] == {"db0": 1}


def test_plain_redis_to_a_tls_port_suggests_rediss(tmp_path: Path, tls_files: Path) -> None:
    with redis_server(tmp_path / "source", tls_files=tls_files) as server:
        with pytest.raises(SourceError) as caught:
            take(engine.open_source(f"redis://127.0.0.1:{server.port}", tmp_path), tmp_path / "dump.rdb")
        assert "rediss://" in str(caught.value)


def test_rediss_to_a_plain_port_says_the_handshake_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_wire, "CONNECT_TIMEOUT_S", 2.0)  # a plain server waits for the end of a "command"
    with redis_server(tmp_path / "source") as server:
        with pytest.raises(SourceError) as caught:
            take(engine.open_source(f"rediss://127.0.0.1:{server.port}", tmp_path), tmp_path / "dump.rdb")
        assert "TLS handshake" in str(caught.value) and "redis://" in str(caught.value)
