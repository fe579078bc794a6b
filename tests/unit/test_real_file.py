"""Which file a restore over a SQLite database writes (jobs.engines._sqlite_files.real_file): every link followed, once."""

import os
from pathlib import Path

import pytest

from jobs.engines._sqlite_files import real_file
from jobs.errors import SourceError


@pytest.mark.parametrize(
    "links, named",
    [
        ({}, "real/app.db"),  # a plain file is itself
        ({"data/app.db": "../real/app.db"}, "data/app.db"),  # a relative link
        ({"data/app.db": "{root}/real/app.db"}, "data/app.db"),  # an absolute link
        ({"data/app.db": "../hop/one.db", "hop/one.db": "../real/app.db"}, "data/app.db"),  # a chain
        ({"data": "real"}, "data/app.db"),  # a linked directory
    ],
)
def test_the_real_file_is_where_the_links_lead(tmp_path: Path, links: dict[str, str], named: str) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "app.db").write_bytes(b"x")
    for link, target in links.items():
        (tmp_path / link).parent.mkdir(exist_ok=True)
        (tmp_path / link).symlink_to(target.format(root=tmp_path))
    assert real_file(tmp_path / named) == (tmp_path / "real" / "app.db").resolve()


@pytest.mark.parametrize("links", [{"app.db": "missing.db"}, {"app.db": "other.db", "other.db": "app.db"}], ids=["dangling", "loop"])
def test_links_that_lead_nowhere_are_one_sentence(tmp_path: Path, links: dict[str, str]) -> None:
    for link, target in links.items():
        os.symlink(target, tmp_path / link)
    with pytest.raises(SourceError, match=r"cannot follow .*app\.db to the database file it names: .*; point BACKUP_SOURCE"):
        real_file(tmp_path / "app.db")
