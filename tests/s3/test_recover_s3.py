"""Which backup a restore at start takes across the volume and the bucket (jobs.recover), against moto's S3
server and SeaweedFS: merged by id, read from the volume when it holds the backup, from the bucket's copy of the
same backup when the volume's is damaged, never a backup of another set."""

from pathlib import Path
import sqlite3
import threading

import pytest

from jobs import offsite, recover
from jobs.artifacts import BackupSet
from jobs.backups import list_backups
from jobs.engines.sqlite import SqliteSource
from jobs.errors import IntegrityError
from tests.s3.conftest import make_app_db, take_backups

pytestmark = pytest.mark.s3_servers  # every test that uses a bucket runs on moto and on SeaweedFS

APP = BackupSet("app", "sqlite")


def notes(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute("SELECT count(*) FROM notes").fetchone()[0]


def rot(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def both(local_backups, make_s3):
    """Three backups of the set app on the volume, the same three in the bucket."""
    local, made = local_backups
    bucket = make_s3(prefix="svc")
    offsite.sync(local, bucket, threading.Event())
    return local, bucket, made


def restore(tmp_path: Path, local, bucket) -> tuple[recover.Restored, Path]:
    target = tmp_path / "lost" / "app.db"  # its directory is gone too: it is made again
    found = recover.gather(local, bucket, APP, threading.Event())
    done = recover.restore_missing(SqliteSource(target), found, tmp_path / "backups", threading.Event())
    return done, target


def test_a_backup_on_the_volume_and_in_the_bucket_is_read_from_the_volume(tmp_path: Path, both) -> None:
    local, bucket, made = both
    found = recover.gather(local, bucket, APP, threading.Event())
    assert [backup.id for backup in found.backups] == [backup.id for backup in reversed(made)]
    assert all([copy.location for copy in found.copies[b.id]] == ["local", "s3"] for b in made)
    done, target = restore(tmp_path, local, bucket)
    assert done.backup.id == made[-1].id and done.location == "local"
    assert notes(target) == 203  # 200 rows and one per backup


def test_a_damaged_volume_copy_is_read_from_the_bucket_the_same_backup_not_an_older_one(tmp_path: Path, both) -> None:
    local, bucket, made = both
    rot(tmp_path / "backups" / made[-1].artifact)
    done, target = restore(tmp_path, local, bucket)
    assert done.backup.id == made[-1].id and done.location == "s3" and not done.notes
    assert notes(target) == 203


def test_the_bucket_s_newer_backup_wins_over_the_volume_s_older_ones(tmp_path: Path, both) -> None:
    local, bucket, made = both
    for backup in made[-1:]:
        (tmp_path / "backups" / backup.manifest_key).unlink()
        (tmp_path / "backups" / backup.artifact).unlink()
    done, _ = restore(tmp_path, local, bucket)
    assert done.backup.id == made[-1].id and done.location == "s3"


def test_a_newer_backup_of_another_set_is_never_taken(tmp_path: Path, both) -> None:
    local, bucket, made = both
    other = make_app_db(tmp_path / "other.db", rows=5)
    take_backups(tmp_path / "backups", other, 1)  # newer than every backup of app, same directory
    offsite.sync(local, bucket, threading.Event())
    assert {backup.backup_set for backup in list_backups(bucket)[0]} == {APP, BackupSet("other", "sqlite")}
    done, target = restore(tmp_path, local, bucket)
    assert done.backup.backup_set == APP and done.backup.id == made[-1].id
    assert notes(target) == 203


def test_every_copy_damaged_takes_the_newest_intact_older_backup_naming_the_one_passed_over(tmp_path: Path, both, s3_client,
                                                                                             bucket) -> None:
    local, remote, made = both
    rot(tmp_path / "backups" / made[-1].artifact)
    key = f"svc/{made[-1].artifact}"
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    done, target = restore(tmp_path, local, remote)
    assert done.backup.id == made[-2].id and done.location == "local"
    (note,) = done.notes
    assert made[-1].id in note and "the backup directory" in note and "the bucket" in note
    assert notes(target) == 202


def test_nothing_intact_anywhere_is_an_integrity_error_naming_each_backup_and_nothing_is_written(tmp_path: Path,
                                                                                                 local_backups) -> None:
    local, made = local_backups
    for backup in made:
        rot(tmp_path / "backups" / backup.artifact)
    with pytest.raises(IntegrityError) as raised:
        restore(tmp_path, local, None)
    assert all(backup.id in str(raised.value) for backup in made)
    assert not (tmp_path / "lost" / "app.db").exists()
    assert not [path for path in (tmp_path / "lost").iterdir()]  # no scratch left beside the database
