"""Several sources: BACKUP_SOURCE (or DATABASE_URL) plus BACKUP_SOURCE_<NAME>, each its own backup set."""

from pathlib import Path

import pytest

from worker.config import ConfigError, load_config
from worker.monitoring.freshness import configured_sets


def load(tmp_path: Path, **env: str):
    return load_config(env, cwd=tmp_path)


def test_each_backup_source_variable_is_a_set_named_by_its_suffix_in_lower_case_after_the_main_one(tmp_path: Path) -> None:
    config = load(tmp_path, BACKUP_SOURCE="sqlite:///app.db", BACKUP_SOURCE_CACHE="redis://:pw@cache:6379",
                  BACKUP_SOURCE_AUDIT_LOG="sqlite:///audit.db")
    assert [(each.name, each.url) for each in config.sources] == [
        ("app", "sqlite:///app.db"), ("audit_log", "sqlite:///audit.db"), ("cache", "redis://:pw@cache:6379")]
    assert [each.main for each in config.sources] == [True, False, False]
    assert [each.source.name() for each in config.sources] == ["app", "audit_log", "cache"]
    assert config.source_url == "sqlite:///app.db"  # the main one, as before there were several
    assert configured_sets(config, tmp_path) == ["app", "audit_log", "cache"]


def test_backup_name_names_the_main_source_only(tmp_path: Path) -> None:
    config = load(tmp_path, DATABASE_URL="sqlite:///app.db", BACKUP_NAME="billing", BACKUP_SOURCE_CACHE="redis://cache")
    assert [spec.name for spec in config.sources] == ["billing", "cache"]


def test_named_sources_alone_need_no_main_source(tmp_path: Path) -> None:
    config = load(tmp_path, BACKUP_SOURCE_CACHE="redis://cache")
    assert config.source_url is None and [(each.name, each.url, each.main) for each in config.sources] == [
        ("cache", "redis://cache", False)]


def test_two_sources_naming_the_same_set_is_a_config_error_naming_both_variables(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_SOURCE="sqlite:///data/app.db", BACKUP_SOURCE_APP="redis://cache")
    (problem,) = caught.value.problems
    assert "BACKUP_SOURCE and BACKUP_SOURCE_APP" in problem and "'app'" in problem


def test_every_source_url_is_validated_and_every_problem_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_SOURCE="mysql://db/app", BACKUP_SOURCE_CACHE="redis://:pw@cache:port", BACKUP_SOURCE_EMPTY=" ",
             **{"BACKUP_SOURCE_BAD.NAME": "redis://cache"})
    problems = caught.value.problems
    assert len(problems) == 4
    assert any(p.startswith("BACKUP_SOURCE:") for p in problems)
    assert any(p.startswith("BACKUP_SOURCE_CACHE:") and "invalid port" in p for p in problems)
    assert any(p.startswith("BACKUP_SOURCE_EMPTY is empty") and "${{Redis.REDIS_URL}}" in p for p in problems)
    assert any(p.startswith("BACKUP_SOURCE_BAD.NAME") and "not a backup set name" in p for p in problems)
    assert not any("pw" in p for p in problems)


def test_every_sources_password_is_a_secret_and_masked_in_the_printed_configuration(tmp_path: Path) -> None:
    config = load(tmp_path, BACKUP_SOURCE="postgresql://u:main-secret@db/app",
                  BACKUP_SOURCE_CACHE="redis://default:cache-secret@cache:6379")
    assert {"main-secret", "cache-secret"} <= set(config.secrets())
    shown = config.describe()
    assert shown["BACKUP_SOURCE_CACHE"] == "redis://default:***@cache:6379"
    assert shown["BACKUP_SETS"] == ["app", "cache"]
    assert not [s for s in ("main-secret", "cache-secret") if s in repr(shown) or s in repr(config)]


@pytest.mark.parametrize("variable", ["BACKUP_SOURCE", "BACKUP_SOURCE_CACHE"])
def test_an_unencoded_at_sign_in_a_password_is_a_config_error_that_shows_none_of_it(tmp_path: Path, variable: str) -> None:
    url = "postgresql://u:Le@k5_pw@127.0.0.1:5432/db" if variable == "BACKUP_SOURCE" else "redis://:Le@k5_pw@cache:6379"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **{variable: url})
    (problem,) = caught.value.problems
    assert variable in problem and "%40" in problem
    assert "Le@k5" not in problem and "k5_pw" not in problem


def test_a_postgresql_port_that_is_not_a_number_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_SOURCE="postgresql://u@127.0.0.1:notaport/db")
    (problem,) = caught.value.problems
    assert "BACKUP_SOURCE" in problem and "'notaport'" in problem and "a number" in problem


@pytest.mark.parametrize("url", ["postgresql://u:Zq/xv@127.0.0.1:5432/db", "redis://:Zq/xv@cache:6379"])
def test_an_unencoded_slash_in_a_password_is_a_config_error_that_shows_none_of_it(tmp_path: Path, url: str) -> None:
    """Read naively, `Zq` would be the host: a later "cannot resolve host Zq" would show part of the password."""
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_SOURCE=url)
    (problem,) = caught.value.problems
    assert "BACKUP_SOURCE" in problem and "%2F" in problem
    assert "Zq" not in problem and "xv" not in problem


def test_a_backup_cycle_opens_each_source_once_when_the_configuration_is_read(tmp_path: Path, monkeypatch) -> None:
    import sqlite3

    from jobs import engines
    from worker.actions.backup import backup_job
    from worker.context import Context

    for name in ("app", "audit"):
        with sqlite3.connect(tmp_path / f"{name}.db") as connection:
            connection.execute("CREATE TABLE t (x)")
            connection.execute("INSERT INTO t VALUES (1)")
    opened: list[str] = []
    real = engines.open_source
    monkeypatch.setattr(engines, "open_source", lambda url, cwd, name=None: opened.append(url) or real(url, cwd, name))
    config = load(tmp_path, BACKUP_SOURCE="sqlite:///app.db", BACKUP_SOURCE_AUDIT="sqlite:///audit.db",
                  BACKUP_DIR=str(tmp_path / "backups"), RETENTION_RULES="")
    ctx = Context(config, tmp_path)
    outcome = backup_job(ctx, upload=False)
    assert outcome.ok, outcome.reason
    assert sorted(outcome.fields["sources"]) == ["app", "audit"]
    assert opened == ["sqlite:///app.db", "sqlite:///audit.db"]  # by load_config, and by nothing after it
    assert all(used is each.source for used, each in zip(ctx.sources(), config.sources, strict=True))
