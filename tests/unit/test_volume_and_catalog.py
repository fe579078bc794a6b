"""The volume (BACKUP_MIN_FREE, unusable directories) and the catalog (64-bit sizes, interrupted runs, errors that
never take an outcome away): the pure decisions."""

from datetime import datetime, timedelta, timezone
import os
from pathlib import Path
import socket
import subprocess
import sys

import pytest
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from jobs.volume import MinFree, dir_problem, parse_min_free, room_problem
from worker.catalog import Catalog, open_catalog, run_is_orphaned, runs
from worker.config import ConfigError, load_config
from worker.runs import run_job

GIB = 1 << 30


@pytest.mark.parametrize(
    "text, total, reserve",
    [
        ("10%", 100 * GIB, 10 * GIB),
        ("2.5%", 1000, 25),
        ("2GB", 1, 2 * 10**9),
        ("500MB", 1, 500 * 10**6),
        ("1GiB", 1, GIB),
        ("1 gib", 1, GIB),
        ("0", 100 * GIB, 0),
        ("0%", 100 * GIB, 0),
    ],
)
def test_min_free_reads_a_share_of_the_volume_or_a_size(text: str, total: int, reserve: int) -> None:
    assert parse_min_free(text).bytes_of(total) == reserve


@pytest.mark.parametrize("text", ["", "ten", "10", "-5%", "95%", "2 parsecs", "1e9B", "GB"])
def test_min_free_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError):
        parse_min_free(text)


def test_a_backup_that_would_leave_less_than_min_free_is_refused_with_the_numbers() -> None:
    ten = MinFree("10%", percent=10.0)
    assert room_problem(free=50 * GIB, total=100 * GIB, needed=5 * GIB, min_free=ten) is None
    problem = room_problem(free=12 * GIB, total=100 * GIB, needed=5 * GIB, min_free=ten)
    assert problem and "BACKUP_MIN_FREE=10%" in problem and "12288 MiB free of 102400 MiB" in problem
    assert "would leave 7168 MiB" in problem and "(10240 MiB)" in problem
    assert "needs about" in room_problem(free=1 * GIB, total=100 * GIB, needed=5 * GIB, min_free=None)
    assert room_problem(free=6 * GIB, total=100 * GIB, needed=5 * GIB, min_free=None) is None


def test_a_backup_dir_that_is_or_lies_under_a_file_is_named_with_the_fix(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "exists and is not a directory" in dir_problem(blocker)
    assert f"because {blocker} is a file" in dir_problem(blocker / "a" / "backups")
    assert dir_problem(tmp_path / "new" / "backups") is None and dir_problem(tmp_path) is None


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("BACKUP_NAME", "app/../x", "letters, digits"),
        ("BACKUP_NAME", "my app", "letters, digits"),
        ("BACKUP_MIN_FREE", "lots", "percentage of the volume"),
        ("CATALOG_URL", "mysql+nodriver://u:hunter2@h/x", "SQLAlchemy does not know"),
        ("CATALOG_URL", "not a url", "not a SQLAlchemy URL"),
        ("CATALOG_URL", "postgresql://u:hunter2@host:notaport/db", "not a number from 1 to 65535"),
        ("CATALOG_URL", "postgresql+psycopg://u:hunter2@host:/db", "not a number from 1 to 65535"),
        ("CATALOG_URL", "postgresql://u:hunter2@h1:5432,h2:5433/db", "several hosts go in the query"),
        ("CATALOG_URL", "postgresql://u:hunter2@host:0/db", "not a number from 1 to 65535"),
        ("CATALOG_URL", "postgresql://u:hunter2@host:70000/db", "not a number from 1 to 65535"),
        ("CATALOG_URL", "postgresql://u:hunter2@[::1/db", "not a number from 1 to 65535"),
        ("CATALOG_URL", "postgresql://u:hunter2 x@host:notaport/db", "not a number from 1 to 65535"),
        ("CATALOG_URL", "postgresql://u:hun@ter2@host/db", "%40"),
        ("CATALOG_URL", "postgresql://u:hunter2/x@host/db", "%2F"),
    ],
)
def test_bad_set_names_space_reserves_and_catalog_urls_are_config_errors(tmp_path: Path, name: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({name: value}, cwd=tmp_path)
    text = "; ".join(raised.value.problems)
    assert name in text and fragment in text and "hunter2" not in text and "ter2" not in text


def test_config_reads_backup_name_and_min_free(tmp_path: Path) -> None:
    config = load_config({"BACKUP_NAME": "billing", "BACKUP_MIN_FREE": "2GB"}, cwd=tmp_path)
    assert config.backup_name == "billing" and config.min_free.bytes_of(1) == 2 * 10**9
    defaults = load_config({}, cwd=tmp_path)
    assert defaults.backup_name is None and defaults.min_free.text == "10%"
    assert defaults.describe()["BACKUP_MIN_FREE"] == "10%"


def test_catalog_sizes_are_64_bit_even_on_postgresql() -> None:
    ddl = str(CreateTable(runs).compile(dialect=postgresql.dialect()))
    assert "size BIGINT" in ddl and "raw_size BIGINT" in ddl


def test_a_five_gib_size_is_stored_and_read_back(tmp_path: Path) -> None:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    catalog.start("r1", "backup", datetime.now(timezone.utc))
    catalog.finish("r1", "succeeded", 1.0, fields={"artifact": "a", "size": 5 * GIB, "raw_size": 7 * GIB})
    row = catalog.last_runs()["backup"]
    assert (row["size"], row["raw_size"]) == (5 * GIB, 7 * GIB)


def test_a_running_row_is_orphaned_only_when_its_process_is_certainly_gone() -> None:
    host, now = socket.gethostname(), datetime.now(timezone.utc)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    assert run_is_orphaned("r", host, int(dead), now)
    assert run_is_orphaned("r", host, os.getpid(), now)  # our pid, but not a run of this life (a container's pid 1)
    assert not run_is_orphaned("r", "another-host", int(dead), now)  # other hosts are never judged
    assert not run_is_orphaned("r", host, os.getppid(), now)  # alive, and started before the run
    assert run_is_orphaned("r", None, None, now - timedelta(days=1))  # version 1 rows, older than this process
    assert not run_is_orphaned("r", None, None, now + timedelta(hours=1))


def test_rows_left_running_by_a_dead_process_are_marked_interrupted(tmp_path: Path) -> None:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    with catalog.engine.begin() as connection:
        connection.execute(runs.insert().values(run_id="killed", job="backup", started_at=datetime.now(timezone.utc),
                                                outcome="running", host=socket.gethostname(), pid=dead))
    outcome = run_job("verify", catalog, lambda: {})
    assert outcome.ok
    with catalog.engine.connect() as connection:
        row = connection.execute(runs.select().where(runs.c.run_id == "killed")).one()
    assert row.outcome == "interrupted" and f"pid {dead}" in row.reason


class BrokenCatalog(Catalog):
    """A catalog whose every write fails with an error SQLAlchemy would not wrap."""

    def start(self, *args: object) -> None:
        raise RuntimeError("catalog exploded")

    finish = start
    mark_interrupted = start


def test_a_failing_catalog_never_takes_a_jobs_outcome_away() -> None:
    outcome = run_job("backup", BrokenCatalog(None), lambda: {"artifact": "a"})
    assert outcome.ok and outcome.fields == {"artifact": "a"}


def test_a_catalog_row_holds_no_secret_in_its_reason_or_details(tmp_path: Path) -> None:
    catalog = open_catalog(f"sqlite:///{tmp_path / 'catalog.db'}", secrets=["pass word#1"])
    run_job("backup", catalog, lambda: (_ for _ in ()).throw(
        ValueError("cannot reach postgresql://u:pass word#1@db/app nor redis://:zz@cache:6379")))
    (row,) = catalog.history()
    assert row["outcome"] == "failed" and "postgresql://u:***@db/app" in row["reason"]
    assert "pass word" not in repr(row) and ":zz@" not in repr(row)
