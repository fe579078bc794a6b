"""The sentence a failed write becomes (jobs.volume.write_problem, behind pipeline.stage): it names the file, and
for a full volume the volume and its free space."""

import errno
import os
from pathlib import Path
import shutil

import pytest

from jobs import pipeline
from jobs.errors import StorageError
from jobs.volume import MIB, write_problem


def oserror(code: int, filename: str | None = None) -> OSError:
    return OSError(code, os.strerror(code), filename) if filename else OSError(code, os.strerror(code))


@pytest.mark.parametrize(
    "code, own_name, expected",
    [
        (errno.ENOSPC, False, "compress failed writing {dir}/app.sqlite.zst: No space left on device; the volume holding "
                              "{dir} has {free} MiB free of {total} MiB; free space or grow the volume"),
        (errno.EDQUOT, False, "compress failed writing {dir}/app.sqlite.zst: Disk quota exceeded; the volume holding {dir} "
                              "has {free} MiB free of {total} MiB; the disk quota is used up; free space or raise the quota"),
        (errno.EFBIG, False, "compress failed writing {dir}/app.sqlite.zst: File too large; the file reached this "
                             "process's file size limit (ulimit -f); raise the limit"),
        (errno.EACCES, True, "compress failed writing {dir}/own-name: Permission denied; check free space and permissions on the volume"),
        (errno.EIO, False, "compress failed writing {dir}/app.sqlite.zst: Input/output error; check free space and permissions on the volume"),
    ],
)
def test_a_failed_write_names_the_file_and_for_a_full_volume_its_free_space(tmp_path: Path, code: int, own_name: bool, expected: str) -> None:
    usage = shutil.disk_usage(tmp_path)
    error = oserror(code, str(tmp_path / "own-name") if own_name else None)
    text = write_problem("compress", error, tmp_path / "app.sqlite.zst")
    assert text == expected.format(dir=tmp_path, free=usage.free // MIB, total=usage.total // MIB)


def test_without_a_file_the_sentence_still_says_where() -> None:
    assert write_problem("publish", oserror(errno.ENOSPC)) == "publish failed on the backup volume: No space left on device; free space or grow the volume"


def test_the_stage_raises_one_storage_error_at_its_name(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as raised:
        with pipeline.stage("compress", writing=tmp_path / "app.zst"):
            raise oserror(errno.ENOSPC)
    assert raised.value.stage == "compress" and str(raised.value).startswith(f"compress failed writing {tmp_path}/app.zst: ")
