"""Reading redis:// and rediss:// URLs: credentials, TLS options, and what is shown to people."""

from pathlib import Path

import pytest

from jobs.engines import redis as engine
from jobs.engines.redis import keyspace, parse_info
from jobs.engines.redis_wire import Tls


def test_a_railway_style_url_gives_host_port_user_and_password() -> None:
    source = engine.open_source("redis://default:p%40ss%3Aword@redis.railway.internal:6379", Path("/app"))
    assert (source.host, source.port, source.username, source.password) == ("redis.railway.internal", 6379, "default", "p@ss:word")
    assert source.tls is None
    assert source.name() == "redis" and source.kind == "rdb"


def test_defaults_are_localhost_port_6379_and_no_password() -> None:
    source = engine.open_source("redis://", Path("/"))
    assert (source.host, source.port, source.username, source.password) == ("localhost", 6379, None, None)


def test_an_empty_password_means_no_auth() -> None:
    assert engine.open_source("redis://:@host:1", Path("/")).password is None


def test_the_database_number_and_app_client_settings_are_accepted_and_ignored() -> None:
    source = engine.open_source("redis://host:6380/3?family=0", Path("/"))
    assert (source.host, source.port) == ("host", 6380)


def test_rediss_verifies_certificates_unless_told_not_to() -> None:
    assert engine.open_source("rediss://host", Path("/")).tls == Tls(verify=True, ca_file=None)
    assert engine.open_source("rediss://host?ssl_cert_reqs=none", Path("/")).tls == Tls(verify=False, ca_file=None)
    assert engine.open_source("rediss://host?ssl_ca_certs=certs/ca.pem", Path("/app")).tls == Tls(True, "/app/certs/ca.pem")


@pytest.mark.parametrize("url, words", [
    ("redis://host:notaport", "invalid port"),
    ("redis://host?timeout=5", "unknown parameters (timeout)"),
    ("redis://host?ssl_cert_reqs=none", "use rediss://"),
    ("rediss://host?ssl_cert_reqs=maybe", "must be none or required"),
])
def test_malformed_urls_are_refused_with_what_to_write(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        engine.open_source(url, Path("/"))


def test_the_password_is_in_no_description_of_the_source() -> None:
    source = engine.open_source("rediss://backup:hunter2-secret@[::1]:6390", Path("/"))
    assert source.describe() == {"kind": "rdb", "database": "redis", "host": "[::1]:6390"}
    assert source.target() == "rediss://backup:***@[::1]:6390"
    assert "hunter2-secret" not in repr(source) + str(source.describe()) + source.target()
    with pytest.raises(ValueError) as caught:
        engine.open_source("redis://u:hunter2-secret@host?bad=1", Path("/"))
    assert "hunter2-secret" not in str(caught.value)


def test_info_and_keyspace_are_parsed() -> None:
    info = parse_info("# Server\r\nredis_version:7.2.4\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=0\r\ndb12:keys=7,expires=0,avg_ttl=0\r\n")
    assert info["redis_version"] == "7.2.4"
    assert keyspace(info) == {"db0": 3, "db12": 7}
