"""A SQLite drill: the proven raw file is the scratch copy (restore's proof wrote it on the backup volume and ran
`PRAGMA integrity_check` on it); its rows are counted exactly as the backup counted its snapshot's."""

from pathlib import Path
import sqlite3
import threading
from typing import Any

from jobs.backups import Backup
from jobs.engines import Source, _sqlite as lib
from jobs.errors import IntegrityError

KIND = "sqlite"


def restore_and_count(raw: Path, backup: Backup, source: Source, operator: object,
                      cancel: threading.Event) -> tuple[list[str], dict[str, Any]]:
    """Given the proven raw database file (a scratch file its caller removes), return the checks this step adds
    and its exact rows per user table. Raise IntegrityError if it cannot be read as a database, Cancelled."""
    try:
        counts = lib.count_rows(raw, cancel.is_set)
    except sqlite3.Error as error:
        raise IntegrityError(f"the rows of {backup.artifact} could not be counted: {lib.reason(error)}") from None
    return ["rows counted"], counts
