"""Snapshots of real Redis servers over the replication protocol, loaded back into fresh servers."""

from pathlib import Path
import subprocess
import threading

import pytest

from jobs.engines import redis as engine
from tests.redis.servers import (ADMIN, PASSWORD, Server, command_lines, everything, fill, load_into_fresh_server,
                                 redis_server, take)


def assert_round_trip(taken_path: Path, original: Server, tmp_path: Path) -> None:
    expected = everything(original)
    with load_into_fresh_server(taken_path, tmp_path / "restored") as restored:
        assert restored.client(0).dbsize() == original.client(0).dbsize()
        assert restored.client(1).dbsize() == original.client(1).dbsize()
        assert everything(restored) == expected


def test_a_snapshot_loads_into_a_fresh_server_with_every_key_and_value(filled_server: Server, tmp_path: Path) -> None:
    source = engine.open_source(filled_server.url(), tmp_path)
    taken = take(source, tmp_path / "dump.rdb")
    assert taken.verified == "RDB header and CRC64"
    assert_round_trip(taken.path, filled_server, tmp_path)
    check = subprocess.run(["redis-check-rdb", str(taken.path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "RDB looks OK" in check.stdout


def test_both_transfer_forms_are_recorded_with_the_size_known_only_for_the_sized_one(filled_server: Server, tmp_path: Path) -> None:
    diskless = filled_server.client().config_get("repl-diskless-sync")["repl-diskless-sync"] == "yes"
    taken = take(engine.open_source(filled_server.url(), tmp_path), tmp_path / "dump.rdb")
    rdb = taken.details["rdb"]
    assert rdb["transfer"] == ("diskless" if diskless else "disk")
    assert taken.size == (None if diskless else taken.raw_size)
    assert taken.raw_size == taken.path.stat().st_size


def test_the_manifest_details_hold_server_version_rdb_version_and_keys_per_database(filled_server: Server, tmp_path: Path) -> None:
    source = engine.open_source(filled_server.url(), tmp_path)
    taken = take(source, tmp_path / "dump.rdb")
    server_version = filled_server.client().info("server")["redis_version"]
    assert taken.details["versions"] == {"server": server_version}
    assert source.versions() == {"server": server_version}
    assert taken.details["rdb"]["keys"] == {"db0": filled_server.client(0).dbsize(), "db1": filled_server.client(1).dbsize()}
    assert taken.details["rdb"]["version"] == int(taken.path.read_bytes()[5:9])
    assert taken.details["rdb"]["checksum"] == "crc64"


def test_a_snapshot_of_an_empty_server_is_a_valid_rdb(tmp_path: Path) -> None:
    with redis_server(tmp_path / "empty") as server:
        taken = take(engine.open_source(server.url(), tmp_path), tmp_path / "dump.rdb")
        assert taken.details["rdb"]["keys"] == {}
        assert subprocess.run(["redis-check-rdb", str(taken.path)], capture_output=True).returncode == 0


def test_a_small_read_size_gives_the_same_file(filled_server: Server, tmp_path: Path) -> None:
    """The 40-byte end mark of the diskless form may straddle reads; small reads must not leak or cut it."""
    source = engine.open_source(filled_server.url(), tmp_path)
    big = take(source, tmp_path / "big.rdb").path.read_bytes()
    small = take(source, tmp_path / "small.rdb", chunk_size=7).path.read_bytes()
    assert small[:9] == big[:9] and len(small) == len(big)
    assert subprocess.run(["redis-check-rdb", str(tmp_path / "small.rdb")], capture_output=True).returncode == 0


def test_a_password_protected_server_is_snapshotted_and_the_password_is_never_shown(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with redis_server(tmp_path / "source", password=PASSWORD) as server:
        fill(server)
        seen: list[str] = []
        source = engine.open_source(server.url(f"default:{PASSWORD}@"), tmp_path)
        taken = take(source, tmp_path / "dump.rdb", on_chunk=lambda _: seen.extend(command_lines()))
        assert seen, "the snapshot streamed no chunk"
        assert not [line for line in seen + command_lines() if PASSWORD in line]
        shown = " ".join([repr(source), str(source.describe()), source.target(), str(taken.details), taken.verified])
        assert PASSWORD not in shown
        assert source.describe() == {"kind": "rdb", "database": "redis", "host": f"127.0.0.1:{server.port}"}
        assert_round_trip(taken.path, server, tmp_path)
    out, err = capfd.readouterr()
    assert PASSWORD not in out + err


def test_a_url_with_only_a_password_authenticates_as_the_default_user(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source", password=PASSWORD) as server:
        server.client().set("k", "v")
        taken = take(engine.open_source(server.url(f":{PASSWORD}@"), tmp_path), tmp_path / "dump.rdb")
        assert taken.details["rdb"]["keys"] == {"db0": 1}


def test_an_acl_user_with_sync_rights_takes_the_snapshot(tmp_path: Path) -> None:
    config = [f"user backup on >{PASSWORD} -@all +sync +psync +replconf +info +ping"]
    with redis_server(tmp_path / "source", password=ADMIN, config=config) as server:
        fill(server)
        source = engine.open_source(server.url(f"backup:{PASSWORD}@"), tmp_path)
        taken = take(source, tmp_path / "dump.rdb")
        assert taken.details["rdb"]["transfer"] == "diskless"
        assert taken.details["rdb"]["keys"]["db1"] == server.client(1).dbsize()
        assert_round_trip(taken.path, server, tmp_path)


def test_an_acl_user_without_replconf_or_info_still_gets_a_sized_snapshot(tmp_path: Path) -> None:
    """REPLCONF and INFO are optional: without them the server sends the sized form and the manifest has no
    versions, but the backup is whole and its key counts (taken from the file, not from INFO) are there."""
    config = [f"user backup on >{PASSWORD} -@all +sync +psync"]
    with redis_server(tmp_path / "source", password=ADMIN, config=config) as server:
        fill(server)
        taken = take(engine.open_source(server.url(f"backup:{PASSWORD}@"), tmp_path), tmp_path / "dump.rdb")
        assert taken.details["rdb"]["transfer"] == "disk"
        assert taken.details["versions"] == {}
        assert taken.details["rdb"]["keys"] == {"db0": server.client(0).dbsize(), "db1": server.client(1).dbsize()}
        assert_round_trip(taken.path, server, tmp_path)


def test_the_server_stays_healthy_and_keeps_no_replica_after_the_snapshot(filled_server: Server, tmp_path: Path) -> None:
    take(engine.open_source(filled_server.url(), tmp_path), tmp_path / "dump.rdb")
    client = filled_server.client()
    replication = client.info("replication")
    for _ in range(50):  # the server notices our hang-up at its next event loop turn
        if replication["connected_slaves"] == 0:
            break
        threading.Event().wait(0.1)
        replication = client.info("replication")
    assert replication["role"] == "master" and replication["connected_slaves"] == 0
    client.set("after", "ok")
    assert client.get("after") == b"ok"


def test_a_server_with_checksums_disabled_is_accepted_and_says_so(tmp_path: Path) -> None:
    with redis_server(tmp_path / "source", config=["rdbchecksum no"]) as server:
        server.client().set("k", "v")
        taken = take(engine.open_source(server.url(), tmp_path), tmp_path / "dump.rdb")
        assert "rdbchecksum no" in taken.verified
        assert taken.details["rdb"]["checksum"] == "disabled"


def test_estimate_size_is_the_dataset_in_memory(filled_server: Server, tmp_path: Path) -> None:
    source = engine.open_source(filled_server.url(), tmp_path)
    estimate = source.estimate_size()
    taken = take(source, tmp_path / "dump.rdb")
    assert estimate >= taken.raw_size > 0


def test_a_host_name_is_tried_address_by_address(tmp_path: Path) -> None:
    """`localhost` may resolve to ::1 first while the server listens on 127.0.0.1 only (as on IPv6-first networks)."""
    with redis_server(tmp_path / "source") as server:
        server.client().set("k", "v")
        taken = take(engine.open_source(f"redis://localhost:{server.port}", tmp_path), tmp_path / "dump.rdb")
        assert taken.details["rdb"]["keys"] == {"db0": 1}
