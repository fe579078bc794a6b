"""Passwords of every shape, through the command line as a user meets them: `config`, a configuration error, and a
failing backup's error, log lines, catalog row and files hold no part of the password (issue 17, mechanism 6).

Every password is two recognisable halves joined by the character under test, so that a parser that cuts the
password at that character (and shows one half as a host, a port or a path) is caught as surely as one that shows
it whole."""

from pathlib import Path
import sqlite3

import pytest

from tests.conftest import Result

HALVES = ("Pw1kQ", "Xq9zR")
SHAPES = {  # how the password is written in the URL
    "space": "Pw1kQ Xq9zR",
    "at": "Pw1kQ@Xq9zR",
    "slash": "Pw1kQ/Xq9zR",
    "hash": "Pw1kQ#Xq9zR",
    "question": "Pw1kQ?Xq9zR",
    "colon": "Pw1kQ:Xq9zR",
    "percent": "Pw1kQ%Xq9zR",
    "encoded": "Pw1kQ%20%40%2F%23Xq9zR",
    "unicode": "Pw1kQü€Xq9zR",
}
# Where a URL with a password goes: the variable and the URL (its port filled in by the test).
URLS = {
    "postgresql": ("BACKUP_SOURCE", "postgresql://app:{password}@127.0.0.1:{port}/shop"),
    "redis": ("BACKUP_SOURCE", "redis://default:{password}@127.0.0.1:{port}/0"),
    "catalog": ("CATALOG_URL", "postgresql://cat:{password}@127.0.0.1:{port}/catalog"),
}
UNREACHABLE = "1"  # nothing listens on port 1


def shown(result: Result) -> str:
    return result.stdout + result.stderr


def assert_hidden(text: str, what: str) -> None:
    leaked = [half for half in HALVES if half in text]
    assert not leaked, f"{what} shows {leaked}: {text[-2000:]}"


def env_for(engine: str, shape: str, port: str) -> dict[str, str]:
    variable, template = URLS[engine]
    return {variable: template.format(password=SHAPES[shape], port=port)}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("engine", URLS)
def test_config_shows_no_part_of_a_password_of_any_shape(worker, engine: str, shape: str) -> None:
    result = worker("config", env=env_for(engine, shape, "5432" if engine != "redis" else "6379"))
    assert result.code in (0, 2), shown(result)
    assert "Traceback" not in result.stderr
    assert_hidden(shown(result), "config")
    if result.code == 0:
        assert f"{URLS[engine][0]}=" in result.stdout and ":***@127.0.0.1:" in result.stdout
    else:
        assert URLS[engine][0] in result.stderr


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("engine", URLS)
def test_a_configuration_error_about_such_a_url_shows_no_part_of_its_password(worker, engine: str, shape: str) -> None:
    result = worker("config", env=env_for(engine, shape, "notaport"))
    assert result.code == 2, shown(result)
    assert URLS[engine][0] in result.stderr and "Traceback" not in result.stderr
    assert_hidden(shown(result), "the configuration error")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("engine", URLS)
def test_a_failing_backup_shows_no_part_of_the_password_in_its_error_log_lines_catalog_row_or_files(
        worker, tmp_path: Path, engine: str, shape: str) -> None:
    result = worker("backup", "--no-upload", env=env_for(engine, shape, UNREACHABLE))
    assert "Traceback" not in result.stderr
    assert_hidden(shown(result), "the backup's output")
    if result.code == 2:  # a URL the configuration refuses (an unencoded "@" or "/"): nothing ran
        return
    if engine == "catalog":  # the catalog cannot open: history is lost, not the backup
        assert result.code == 0 and result.event("catalog.unavailable")["level"] == "warning"
        return
    assert result.code == 1 and result.event("job.failed")["stage"], shown(result)
    for path in (tmp_path / "backups").rglob("*"):
        if path.is_file():
            assert_hidden(path.read_bytes().decode(errors="replace"), str(path))
    with sqlite3.connect(tmp_path / "backups" / "catalog.db") as catalog:
        rows = catalog.execute("SELECT * FROM runs").fetchall()
    assert [row[1] for row in rows] == ["backup"] and rows[0][4] == "failed"
    assert_hidden(repr(rows), "the catalog row")
    history = worker("history", "--json", env=env_for(engine, shape, UNREACHABLE))
    assert history.code == 0 and "failed" in history.stdout
    assert_hidden(shown(history), "history")


@pytest.mark.parametrize("url", ["redis://:Q@127.0.0.1:6379/0", "postgresql://app:Q@127.0.0.1:5432/shop",
                                 "redis://:Qz@127.0.0.1:6379/0"])
def test_a_password_of_one_or_two_characters_is_masked_where_it_is_a_urls_password(worker, url: str) -> None:
    result = worker("config", env={"BACKUP_SOURCE": url})
    assert result.code == 0 and ":***@127.0.0.1:" in result.stdout
    assert ":Q@" not in shown(result) and ":Qz@" not in shown(result)
