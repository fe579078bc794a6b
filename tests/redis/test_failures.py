"""What goes wrong with a Redis source: each failure is one sentence naming the cause and the fix, nothing is
kept, the password is never shown, and a stop request is honoured at once."""

from pathlib import Path
import socket
import threading
import time

import pytest

from jobs.engines import redis as engine
from jobs.errors import Cancelled, SourceError
from tests.redis.servers import ADMIN, PASSWORD, Server, free_port, redis_server, take


def failure(url: str, tmp_path: Path, **take_options: object) -> str:
    """Take a snapshot that must fail; return its message after checking that nothing was kept."""
    with pytest.raises(SourceError) as caught:
        take(engine.open_source(url, tmp_path), tmp_path / "dump.rdb", **take_options)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("dump.rdb")) == []
    message = str(caught.value)
    assert PASSWORD not in message and ADMIN not in message
    assert message.count(". ") == 0 and "\n" not in message, "one sentence"
    return message


def test_an_unreachable_server_names_the_address_and_what_to_check(tmp_path: Path) -> None:
    message = failure(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}", tmp_path)
    assert "cannot connect to the Redis server at 127.0.0.1:" in message
    assert "Connection refused" in message and "check the host and port" in message


def test_an_unknown_host_names_the_host(tmp_path: Path) -> None:
    message = failure("redis://no-such-host.invalid:6379", tmp_path)
    assert "cannot resolve the Redis host 'no-such-host.invalid'" in message


def test_a_wrong_password_says_the_credentials_were_rejected(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source", password=ADMIN) as server:
        message = failure(server.url(f"default:{PASSWORD}@"), tmp_path)
        assert "rejected the password" in message and "check the credentials" in message


def test_a_wrong_acl_user_password_names_the_user(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source", password=ADMIN, config=["user backup on >right-one -@all +sync"]) as server:
        message = failure(server.url(f"backup:{PASSWORD}@"), tmp_path)
        assert "rejected the user 'backup' and password" in message


def test_a_missing_password_says_how_to_put_it_in_the_url(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source", password=ADMIN) as server:
        message = failure(server.url(), tmp_path)
        assert "requires a password" in message and "redis://default:PASSWORD@" in message


def test_an_acl_user_without_sync_rights_is_told_replication_is_not_allowed_and_how_to_grant_it(tmp_path: Path) -> None:
    config = [f"user reader on >{PASSWORD} +@read +info +replconf"]
    with redis_server(tmp_path / "source", password=ADMIN, config=config) as server:
        server.client().set("k", "v")
        message = failure(server.url(f"reader:{PASSWORD}@"), tmp_path)
        assert "'reader' may not run SYNC" in message and "ACL SETUSER reader +sync" in message


def test_a_server_with_sync_disabled_says_the_service_does_not_allow_replication(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source", config=['rename-command SYNC ""', 'rename-command PSYNC ""']) as server:
        message = failure(server.url(), tmp_path)
        assert "does not allow replication" in message and "provider's own backups" in message


def test_a_server_killed_mid_transfer_fails_the_snapshot_and_keeps_nothing(tmp_path: Path) -> None:
    for diskless in (True, False):
        with redis_server(tmp_path / f"source-{diskless}", diskless=diskless) as server:
            server.client().execute_command("DEBUG", "POPULATE", 600_000, "key", 64)
            killed = []

            def kill_after_first_chunk(_written: int, server: Server = server) -> None:
                if not killed:
                    server.kill()
                    killed.append(True)

            message = failure(server.url(), tmp_path, chunk_size=1 << 16, on_chunk=kill_after_first_chunk)
            assert killed
            assert "closed the connection after" in message and "incomplete snapshot is discarded" in message


def test_a_connection_closed_before_the_payload_explains_the_usual_cause(tmp_path: Path) -> None:
    """The server hangs up while preparing the snapshot (here: killed during the diskless delay)."""
    with redis_server(tmp_path / "source", config=["repl-diskless-sync-delay 30"]) as server:
        threading.Timer(1.0, server.kill).start()
        message = failure(server.url(), tmp_path)
        assert "closed the connection before sending the snapshot" in message


def test_cancel_stops_a_snapshot_waiting_for_the_server_within_a_second_or_two(tmp_path: Path) -> None:
    """repl-diskless-sync-delay makes the server wait (sending newlines) before it forks: a stop must not wait."""
    with redis_server(tmp_path / "source", config=["repl-diskless-sync-delay 60"]) as server:
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            take(engine.open_source(server.url(), tmp_path), tmp_path / "dump.rdb", cancel=cancel)
        assert time.monotonic() - started < 5
        assert not list(tmp_path.glob("dump.rdb*"))
        assert server.client().ping()


def test_cancel_stops_a_snapshot_mid_transfer(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source") as server:
        server.client().execute_command("DEBUG", "POPULATE", 200_000, "key", 64)
        cancel = threading.Event()
        with pytest.raises(Cancelled):
            take(engine.open_source(server.url(), tmp_path), tmp_path / "dump.rdb", cancel=cancel,
                 chunk_size=1 << 16, on_chunk=lambda _: cancel.set())
        assert not list(tmp_path.glob("dump.rdb*"))


def test_cancel_stops_a_snapshot_of_a_server_that_never_answers(tmp_path: Path) -> None:
    """A peer that accepts the connection and then says nothing: waiting for its reply must not outlast a stop."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            take(engine.open_source(f"redis://127.0.0.1:{silent.getsockname()[1]}", tmp_path), tmp_path / "dump.rdb", cancel=cancel)
        assert time.monotonic() - started < 5


def test_restore_without_a_target_file_is_refused_with_the_way_to_load_an_rdb(tmp_path: Path) -> None:
    source = engine.open_source(f"redis://:{PASSWORD}@127.0.0.1:6379", tmp_path)
    with pytest.raises(SourceError) as caught:
        source.restore(tmp_path / "raw.rdb", threading.Event())
    assert caught.value.stage == "restore"
    assert "restore --to PATH" in str(caught.value) and "dump.rdb" in str(caught.value)
