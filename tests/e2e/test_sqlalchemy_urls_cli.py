"""The URL the app already has: BACKUP_SOURCE or DATABASE_URL in SQLAlchemy form (`sqlite+aiosqlite://`,
`sqlite+pysqlite://`) works for `config`, `backup` and `restore --to` as the plain URL does."""

import json
from pathlib import Path
import sqlite3

import pytest

from tests.conftest import make_app_db


@pytest.mark.parametrize("variable", ["BACKUP_SOURCE", "DATABASE_URL"])
@pytest.mark.parametrize("scheme", ["sqlite+aiosqlite", "sqlite+pysqlite"])
def test_a_sqlalchemy_sqlite_url_configures_backs_up_and_restores(variable: str, scheme: str, tmp_path: Path,
                                                                  worker, worker_env) -> None:
    (tmp_path / "data").mkdir()
    database = make_app_db(tmp_path / "data" / "shop.db", rows=50)
    env = {"BACKUP_SOURCE": "", variable: f"{scheme}:///data/shop.db?check_same_thread=false"}
    if variable == "DATABASE_URL":
        worker_env.pop("BACKUP_SOURCE")
        env.pop("BACKUP_SOURCE")

    config = worker("config", env=env)
    assert config.code == 0, config.stderr
    assert "BACKUP_SETS=shop" in config.stdout.splitlines()

    backup = worker("backup", "--json", env=env)
    assert backup.code == 0, backup.stderr
    outcome = json.loads(backup.stdout)
    assert outcome["artifact"].startswith("shop-") and outcome["artifact"].endswith(".sqlite.zst")
    manifest = json.loads((tmp_path / "backups" / f"{outcome['artifact']}.json").read_text())
    assert manifest["source"]["path"] == str(database)

    target = tmp_path / "restored.db"
    restored = worker("restore", "--latest", "--to", str(target), env=env)
    assert restored.code == 0, restored.stderr
    with sqlite3.connect(target) as copy:
        assert copy.execute("SELECT count(*) FROM messages").fetchone() == (50,)
