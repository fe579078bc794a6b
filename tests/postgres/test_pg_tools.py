"""Choosing pg_dump: versions parsed from `--version`, the same or nearest newer major, never an older one."""

from pathlib import Path

import pytest

from jobs.engines import pg_tools
from jobs.engines.pg_tools import Tools
from jobs.errors import SourceError


def fake_tools(directory: Path, version: str, marker: Path | None = None) -> Path:
    """Write a pg_dump and pg_restore that report `version` and, if used for anything else, fail (and leave a marker)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("pg_dump", "pg_restore"):
        used = f"touch '{marker}'; " if marker else ""
        script = directory / name
        script.write_text(f"""#!/bin/sh
if [ "$1" = "--version" ]; then echo "{name} (PostgreSQL) {version}"; exit 0; fi
{used}echo "{name}: this fake {version} must not be used" >&2
exit 1
""")
        script.chmod(0o755)
    return directory


@pytest.mark.parametrize("text, expected", [
    ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", ("15.20", (15,))),
    ("pg_dump (PostgreSQL) 16.4", ("16.4", (16,))),
    ("pg_dump (PostgreSQL) 17beta1", ("17", (17,))),
    ("pg_dump (PostgreSQL) 9.6.24", ("9.6.24", (9, 6))),
    ("pg_dump (PostgreSQL) 11.22", ("11.22", (11,))),
    ("something else 15.2", None),
])
def test_versions_are_read_from_what_the_tool_says(text, expected):
    assert pg_tools.parse_version(text) == expected


@pytest.mark.parametrize("num, expected", [(150020, ("15.20", (15,))), (160004, ("16.4", (16,))), (90624, ("9.6.24", (9, 6)))])
def test_server_version_num_gives_version_and_major(num, expected):
    assert pg_tools.server_version(num) == expected


def tools(version: str, where: str = "/x") -> Tools:
    parsed = pg_tools.parse_version(f"(PostgreSQL) {version}")
    assert parsed
    return Tools(Path(where) / "pg_dump", Path(where) / "pg_restore", parsed[0], parsed[1])


@pytest.mark.parametrize("server, available, expected", [
    ((15,), ["11.22", "15.20", "16.4", "17.2"], "15.20"),  # the same major first
    ((15,), ["17.2", "16.4", "11.22"], "16.4"),  # else the nearest newer
    ((15,), ["15.2", "15.20", "15.9"], "15.20"),  # the newest patch of that major
    ((16,), ["11.22", "15.20"], None),  # never an older one
    ((9, 6), ["9.5.25", "10.23", "15.20"], "10.23"),
])
def test_choose_takes_the_same_or_nearest_newer_major_never_older(server, available, expected):
    chosen = pg_tools.choose(server, [tools(v) for v in available])
    assert (chosen.version if chosen else None) == expected


def test_an_old_pg_dump_first_on_path_is_passed_over(tmp_path, monkeypatch):
    marker = tmp_path / "used"
    old = fake_tools(tmp_path / "old", "11.22", marker)
    monkeypatch.setenv("PATH", f"{old}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.delenv("PG_BIN_DIR", raising=False)
    chosen = pg_tools.tools_for((15,), "15.20")
    assert chosen.major >= (15,) and chosen.pg_dump.parent != old
    assert chosen.pg_restore.parent == chosen.pg_dump.parent
    assert not marker.exists()


def test_pg_bin_dir_is_the_only_place_looked_at_and_the_failure_names_the_fix(tmp_path):
    fakes = fake_tools(tmp_path / "fakes", "11.22")
    with pytest.raises(SourceError) as caught:
        pg_tools.tools_for((15,), "15.20", str(fakes))
    message = str(caught.value)
    assert "PostgreSQL 15.20" in message and "11.22" in message
    assert "apt-get install postgresql-client-15" in message and "PG_BIN_DIR" in message and "Railway" in message
    assert "\n" not in message


def test_an_empty_pg_bin_dir_says_nothing_was_found_there(tmp_path):
    with pytest.raises(SourceError, match=r"no pg_dump .* was found in PG_BIN_DIR=.*postgresql-client-16"):
        pg_tools.tools_for((16,), "16.4", str(tmp_path))


def test_debians_pg_wrapper_is_passed_over_for_the_binaries_it_would_run(tmp_path, monkeypatch):
    wrapper_dir = tmp_path / "usr-bin"
    wrapper_dir.mkdir()
    share = fake_tools(tmp_path / "share", "99.1")
    (share / "pg_dump").rename(share / "pg_wrapper")
    (wrapper_dir / "pg_dump").symlink_to(share / "pg_wrapper")
    (wrapper_dir / "pg_restore").symlink_to(share / "pg_wrapper")
    monkeypatch.setenv("PATH", str(wrapper_dir))
    found = pg_tools.installed()
    assert all(t.pg_dump.parent != wrapper_dir for t in found)


def test_a_pg_dump_without_pg_restore_beside_it_is_not_used(tmp_path):
    lonely = fake_tools(tmp_path / "lonely", "15.20")
    (lonely / "pg_restore").unlink()
    assert pg_tools.installed(str(lonely)) == []


def test_newest_takes_the_highest_installed_version(tmp_path):
    fake_tools(tmp_path / "bin", "15.20")
    assert pg_tools.newest(str(tmp_path / "bin")).version == "15.20"
    with pytest.raises(SourceError, match="install postgresql-client"):
        pg_tools.newest(str(tmp_path / "nothing"))
