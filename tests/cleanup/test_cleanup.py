"""Integration tests for the cleanup job on real files, with modification times set by os.utime."""

from datetime import datetime, timezone
import json
import os
from pathlib import Path
import shutil
import threading
import time
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from jobs.cleanup import CleanupReport, apply_plan, parse_rules, plan_rule, run_cleanup
from jobs.errors import Cancelled

HOUR = 3600


def make(path: Path, hours_old: float = 0, content: bytes = b"x") -> Path:
    """Create a file (and its parents) last modified `hours_old` hours ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    age(path, hours_old)
    return path


def age(path: Path, hours_old: float) -> None:
    moment = time.time() - hours_old * HOUR
    os.utime(path, (moment, moment), follow_symlinks=False)


def clean(text: str, root: Path, dry_run: bool = False, cancel: threading.Event | None = None) -> CleanupReport:
    return run_cleanup(parse_rules(text, root), dry_run=dry_run, now=None, cancel=cancel or threading.Event())


def remaining(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_old_matching_files_are_removed_and_new_or_other_files_are_kept(tmp_path: Path) -> None:
    make(tmp_path / "audio/old.mp3", 30, b"12345")
    make(tmp_path / "audio/older.mp3", 300, b"123")
    make(tmp_path / "audio/new.mp3", 1)
    make(tmp_path / "audio/old.wav", 30)

    report = clean("audio/*.mp3=24h", tmp_path)

    assert remaining(tmp_path / "audio") == {"new.mp3", "old.wav"}
    assert (report.files, report.bytes, report.failed) == (2, 8, 0)


@pytest.mark.parametrize(
    "glob, removed",
    [
        ("*.mp3", {"a.mp3", "b.mp3", ".hidden.mp3"}),
        ("?.mp3", {"a.mp3", "b.mp3"}),
        ("[a].mp3", {"a.mp3"}),
        ("a.mp3", {"a.mp3"}),
        ("*", {"a.mp3", "b.mp3", ".hidden.mp3", "ab.wav"}),
        ("**", {"a.mp3", "b.mp3", ".hidden.mp3", "ab.wav", "sub/c.mp3", "sub/deep/d.mp3"}),
        ("**/*.mp3", {"a.mp3", "b.mp3", ".hidden.mp3", "sub/c.mp3", "sub/deep/d.mp3"}),
        ("*/*.mp3", {"sub/c.mp3"}),
        ("sub/**/d.mp3", {"sub/deep/d.mp3"}),
    ],
)
def test_wildcards_match_within_a_segment_and_double_star_across_directories(
        tmp_path: Path, glob: str, removed: set[str]) -> None:
    every = {"a.mp3", "b.mp3", ".hidden.mp3", "ab.wav", "sub/c.mp3", "sub/deep/d.mp3"}
    for name in every:
        make(tmp_path / "base" / name, 48)

    clean(f"base/{glob}=1d", tmp_path)

    left = {p for p in remaining(tmp_path / "base") if (tmp_path / "base" / p).is_file()}
    assert left == every - removed


def test_a_rule_without_double_star_does_not_recurse_into_subdirectories(tmp_path: Path) -> None:
    make(tmp_path / "audio/top.mp3", 48)
    make(tmp_path / "audio/sub/nested.mp3", 48)

    report = clean("audio/*.mp3=1d", tmp_path)

    assert report.files == 1
    assert remaining(tmp_path / "audio") == {"sub", "sub/nested.mp3"}


def test_a_double_star_rule_recurses_and_removes_the_directories_it_empties(tmp_path: Path) -> None:
    make(tmp_path / "tmp/a/b/old.bin", 10)
    make(tmp_path / "tmp/c/old.bin", 10)
    make(tmp_path / "tmp/c/fresh.bin", 1)
    make(tmp_path / "tmp/d/old.bin", 10)
    (tmp_path / "tmp/e").mkdir()
    for directory in ("a/b", "a", "c", "d", "e"):
        age(tmp_path / "tmp" / directory, 10)

    report = clean("tmp/**=6h", tmp_path)

    assert remaining(tmp_path / "tmp") == {"c", "c/fresh.bin"}
    assert (tmp_path / "tmp").is_dir()  # the base itself always stays
    assert (report.files, report.dirs_removed) == (3, 4)


def test_a_double_star_rule_keeps_a_directory_holding_files_the_glob_does_not_match(tmp_path: Path) -> None:
    make(tmp_path / "tmp/logs/old.log", 10)
    make(tmp_path / "tmp/logs/notes.txt", 10)
    age(tmp_path / "tmp/logs", 10)

    report = clean("tmp/**/*.log=6h", tmp_path)

    assert remaining(tmp_path / "tmp") == {"logs", "logs/notes.txt"}
    assert report.dirs_removed == 0


def test_a_recently_changed_empty_directory_survives_a_double_star_rule(tmp_path: Path) -> None:
    (tmp_path / "tmp/just_made").mkdir(parents=True)

    report = clean("tmp/**=6h", tmp_path)

    assert (tmp_path / "tmp/just_made").is_dir()
    assert report.dirs_removed == 0


def test_empty_directories_are_never_removed_without_double_star(tmp_path: Path) -> None:
    make(tmp_path / "cache/x/thumb.png", 48)
    (tmp_path / "cache/y").mkdir()
    for directory in ("x", "y"):
        age(tmp_path / "cache" / directory, 48)

    report = clean("cache/*/*.png=1d", tmp_path)

    assert remaining(tmp_path / "cache") == {"x", "y"}
    assert (report.files, report.dirs_removed) == (1, 0)


def test_a_symlink_to_a_file_outside_the_base_is_removed_but_its_target_survives(tmp_path: Path) -> None:
    target = make(tmp_path / "precious/keep.mp3", 48, b"do not touch")
    link = tmp_path / "audio/link.mp3"
    link.parent.mkdir()
    link.symlink_to(target)
    age(link, 48)

    report = clean("audio/*.mp3=1d", tmp_path)

    assert not link.is_symlink()
    assert target.read_bytes() == b"do not touch"
    assert report.files == 1


def test_a_symlinked_directory_is_never_descended_and_its_files_survive(tmp_path: Path) -> None:
    outside = make(tmp_path / "precious/old.mp3", 48)
    link = tmp_path / "audio/linked_dir"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "precious", target_is_directory=True)
    age(link, 48)

    clean("audio/**/*.mp3=1d", tmp_path)
    assert outside.exists() and link.is_symlink()

    clean("audio/**=1d", tmp_path)  # the link itself matches `**` and is old: it goes, its target stays
    assert outside.exists() and not link.is_symlink()


def test_only_regular_files_and_symlinks_are_removed_never_fifos(tmp_path: Path) -> None:
    fifo = tmp_path / "tmp/pipe"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    age(fifo, 48)

    report = clean("tmp/*=1d", tmp_path)

    assert fifo.exists() and report.files == 0


def test_a_file_that_vanishes_between_plan_and_delete_is_counted_not_fatal(tmp_path: Path) -> None:
    for index in range(5):
        make(tmp_path / f"audio/{index}.mp3", 48)
    [rule] = parse_rules("audio/*.mp3=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    (tmp_path / "audio/3.mp3").unlink()  # someone else removed it meanwhile

    result = apply_plan(plan, cancel=threading.Event())

    assert (result.files, result.vanished, result.failed) == (4, 1, 0)
    assert remaining(tmp_path / "audio") == set()


def test_an_entry_that_cannot_be_removed_is_counted_as_failed_and_the_rest_go_on(tmp_path: Path) -> None:
    for index in range(3):
        make(tmp_path / f"audio/{index}.mp3", 48)
    [rule] = parse_rules("audio/*.mp3=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    (tmp_path / "audio/1.mp3").unlink()
    make(tmp_path / "audio/1.mp3/inside", 0)  # now a directory: unlink refuses it, even as root
    age(tmp_path / "audio/1.mp3", 48)  # as old as the file it replaced: it still goes by age, and cannot

    result = apply_plan(plan, cancel=threading.Event())

    assert (result.files, result.failed) == (2, 1)
    assert "1.mp3" in result.errors[0]
    assert remaining(tmp_path / "audio") == {"1.mp3", "1.mp3/inside"}


def test_a_directory_swapped_for_a_symlink_after_the_scan_is_not_followed(tmp_path: Path) -> None:
    make(tmp_path / "tmp/sub/a.bin", 48)
    make(tmp_path / "tmp/sub/b.bin", 48)
    [rule] = parse_rules("tmp/**=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    # between plan and delete, the directory is replaced by a link to files with the same names
    shutil.rmtree(tmp_path / "tmp/sub")
    precious_a = make(tmp_path / "precious/a.bin", 48)
    precious_b = make(tmp_path / "precious/b.bin", 48)
    (tmp_path / "tmp/sub").symlink_to(tmp_path / "precious", target_is_directory=True)

    result = apply_plan(plan, cancel=threading.Event())

    assert precious_a.exists() and precious_b.exists()
    assert (result.files, result.failed) == (0, 2)


def test_a_dry_run_deletes_nothing_and_lists_what_would_go(tmp_path: Path) -> None:
    old = make(tmp_path / "audio/old.mp3", 48, b"1234")
    make(tmp_path / "audio/new.mp3", 1)

    report = clean("audio/*.mp3=1d", tmp_path, dry_run=True)

    assert old.exists()
    assert (report.files, report.bytes) == (1, 4)
    assert report.rules[0].would_remove == [str(old)]


def test_a_dry_run_list_is_capped_for_display(tmp_path: Path) -> None:
    for index in range(50):
        make(tmp_path / f"audio/{index}.mp3", 48)

    report = clean("audio/*.mp3=1d", tmp_path, dry_run=True)

    assert report.files == 50
    assert 0 < len(report.rules[0].would_remove) < 50


def test_plans_say_why_each_entry_goes(tmp_path: Path) -> None:
    make(tmp_path / "audio/old.mp3", 30)
    [rule] = parse_rules("audio/*.mp3=24h", tmp_path)

    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())

    [candidate] = plan.candidates
    assert plan.path(candidate) == str(tmp_path / "audio/old.mp3")
    assert plan.reason(candidate) == "last modified 30h ago, older than 1d"


def test_a_missing_base_directory_is_a_warning_not_an_error(tmp_path: Path) -> None:
    make(tmp_path / "audio/old.mp3", 48)

    with capture_logs() as logs:
        report = clean("nowhere/*.mp3=1d;audio/*.mp3=1d", tmp_path)

    assert [r.missing for r in report.rules] == [True, False]
    assert report.files == 1
    [warning] = [e for e in logs if e["event"] == "cleanup.missing_directory"]
    assert warning["log_level"] == "warning"
    assert warning["directory"] == str(tmp_path / "nowhere")


def test_each_rule_is_logged_with_its_counts(tmp_path: Path) -> None:
    make(tmp_path / "audio/old.mp3", 48, b"123")
    make(tmp_path / "tmp/a/old.bin", 48, b"12")
    age(tmp_path / "tmp/a", 48)

    with capture_logs() as logs:
        clean("audio/*.mp3=1d;tmp/**=1d", tmp_path)

    events = [e for e in logs if e["event"] == "cleanup.rule"]
    assert [(e["rule"], e["files"], e["bytes"], e["failed"], e["dirs_removed"]) for e in events] == [
        (f"{tmp_path}/audio/*.mp3=1d", 1, 3, 0, 0),
        (f"{tmp_path}/tmp/**=1d", 1, 2, 0, 1),
    ]


def test_the_report_fields_are_json_totals_and_per_rule_summaries(tmp_path: Path) -> None:
    make(tmp_path / "a/old.mp3", 48, b"123")
    make(tmp_path / "b/old.mp3", 48, b"45")

    fields = clean("a/*.mp3=1d;b/*.mp3=1d;c/*=1d", tmp_path).fields()

    assert json.loads(json.dumps(fields)) == fields
    assert (fields["files"], fields["bytes"], fields["failed"]) == (2, 5, 0)
    assert [rule["files"] for rule in fields["rules"]] == [1, 1, 0]
    assert fields["missing"] == [f"{tmp_path}/c/*=1d"]


def test_a_set_cancel_event_stops_the_cleanup_before_anything_is_deleted(tmp_path: Path) -> None:
    old = make(tmp_path / "audio/old.mp3", 48)
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(Cancelled, match="the worker is stopping; cleanup stopped early"):
        clean("audio/*.mp3=1d", tmp_path, cancel=cancel)
    assert old.exists()


def test_cancelling_during_deletion_stops_between_files(tmp_path: Path) -> None:
    for index in range(10):
        make(tmp_path / f"audio/{index}.mp3", 48)
    [rule] = parse_rules("audio/*.mp3=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    checks = iter(range(1000))
    stopping = SimpleNamespace(is_set=lambda: next(checks) >= 3)  # set after three files

    with pytest.raises(Cancelled):
        apply_plan(plan, cancel=stopping)  # type: ignore[arg-type]
    assert len(remaining(tmp_path / "audio")) == 7


@pytest.mark.slow
def test_a_hundred_thousand_files_are_cleaned_up_correctly(tmp_path: Path) -> None:
    directory = tmp_path / "audio"
    directory.mkdir()
    old = time.time() - 48 * HOUR
    for index in range(100_000):
        path = f"{directory}/{index}.mp3"
        os.mknod(path, 0o600)  # an empty regular file, cheaper than open and close
        if index % 2:
            os.utime(path, (old, old))

    report = clean("audio/*.mp3=1d", tmp_path)

    left = os.listdir(directory)
    assert report.files == 50_000 and report.failed == 0
    assert len(left) == 50_000
    assert all(int(name.removesuffix(".mp3")) % 2 == 0 for name in left)


def test_a_base_directory_swapped_for_a_symlink_between_plan_and_delete_is_refused(tmp_path: Path) -> None:
    names = ["app-20260101T000000Z.sqlite.zst", "app-20260101T000000Z.sqlite.zst.json"]
    for name in names:
        make(tmp_path / "scratch" / name, 48)
        make(tmp_path / "backups" / name, 48, b"a real backup")
    [rule] = parse_rules("scratch/*=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    assert len(plan.candidates) == 2
    # between plan and delete, the base becomes a link to a directory holding files of the same names
    (tmp_path / "scratch").rename(tmp_path / "scratch.old")
    (tmp_path / "scratch").symlink_to(tmp_path / "backups", target_is_directory=True)

    with capture_logs() as logs:
        result = apply_plan(plan, cancel=threading.Event())

    assert sorted(p.name for p in (tmp_path / "backups").iterdir()) == names
    assert sorted(p.name for p in (tmp_path / "scratch.old").iterdir()) == names, "the rule was not refused whole"
    assert (result.files, result.failed) == (0, 2)
    assert result.errors[0].startswith("refused: its base directory") and "nothing was removed" in result.errors[0]
    assert [e["event"] for e in logs] == ["cleanup.rule_refused"]


def test_a_base_directory_replaced_by_another_directory_between_plan_and_delete_is_refused(tmp_path: Path) -> None:
    make(tmp_path / "scratch/old.bin", 48)
    [rule] = parse_rules("scratch/*=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    (tmp_path / "scratch").rename(tmp_path / "scratch.old")
    make(tmp_path / "scratch/old.bin", 48, b"someone else's")

    result = apply_plan(plan, cancel=threading.Event())

    assert (tmp_path / "scratch/old.bin").read_bytes() == b"someone else's"
    assert (tmp_path / "scratch.old/old.bin").exists()
    assert result.failed == 1 and "replaced by another directory" in result.errors[0]


def test_a_base_reached_through_a_symlinked_parent_is_cleaned_as_usual(tmp_path: Path) -> None:
    make(tmp_path / "volume/tmp/old.bin", 48)
    make(tmp_path / "volume/tmp/new.bin", 0)
    (tmp_path / "data").symlink_to(tmp_path / "volume", target_is_directory=True)

    report = clean("data/tmp/*.bin=1d", tmp_path)

    assert (report.files, report.failed) == (1, 0)
    assert remaining(tmp_path / "volume/tmp") == {"new.bin"}


def test_the_guard_judges_the_directory_the_rule_holds_open(tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    make(backups / "app-20260101T000000Z.sqlite.zst", 48)
    (tmp_path / "scratch").symlink_to(backups, target_is_directory=True)  # swapped in after config was checked
    asked: list[Path] = []

    def guard(rule) -> str | None:  # noqa: ANN001
        asked.append(rule.base)
        return "would sweep the backup directory" if rule.base == backups else None

    report = run_cleanup(parse_rules("scratch/*=1d", tmp_path), dry_run=False, now=None, cancel=threading.Event(),
                         guard=guard)

    assert asked == [backups]
    assert (backups / "app-20260101T000000Z.sqlite.zst").exists()
    assert report.failed == 1 and "refused: would sweep the backup directory" in report.rules[0].errors


def rewrite(path: Path) -> None:
    path.write_bytes(b"new content")


def touch(path: Path) -> None:
    os.utime(path)


def replace_with_new(path: Path) -> None:
    path.unlink()
    path.write_bytes(b"another file")


def replace_with_old(path: Path) -> None:
    make(path.with_name("elsewhere.tmp"), 72, b"older still").rename(path)


def replace_with_new_link(path: Path) -> None:
    path.unlink()
    path.symlink_to("/etc/hostname")


def make_older(path: Path) -> None:
    age(path, 96)


@pytest.mark.parametrize("change, stays", [
    (rewrite, True),
    (touch, True),
    (replace_with_new, True),
    (replace_with_new_link, True),
    (replace_with_old, False),  # another inode, but old: the rule is about age
    (make_older, False),
    (lambda path: None, False),
])
def test_a_file_is_removed_only_if_it_is_still_old_when_it_is_deleted(tmp_path: Path, change, stays: bool) -> None:
    target = make(tmp_path / "audio/b.mp3", 48)
    make(tmp_path / "audio/a.mp3", 48)
    [rule] = parse_rules("audio/*.mp3=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    assert len(plan.candidates) == 2
    change(target)  # between the scan and the deletion, the app writes it again (or not)

    result = apply_plan(plan, cancel=threading.Event())

    assert (target.exists() or target.is_symlink()) == stays
    assert remaining(tmp_path / "audio") == ({"b.mp3"} if stays else set())
    assert (result.files, result.changed, result.failed) == ((1, 1, 0) if stays else (2, 0, 0))


def make_anew(directory: Path) -> None:
    shutil.rmtree(directory)
    directory.mkdir()  # the app made it anew (perhaps with the same inode number): changed just now


def empty_it(directory: Path) -> None:
    (directory / "old.bin").unlink()  # the app emptied it itself just now: it is in use


@pytest.mark.parametrize("change, stays", [(make_anew, True), (empty_it, True), (lambda directory: None, False)])
def test_an_emptied_directory_goes_only_if_it_is_the_one_scanned_and_nobody_changed_it_since(
        tmp_path: Path, change, stays: bool) -> None:
    make(tmp_path / "tmp/session/old.bin", 48)
    age(tmp_path / "tmp/session", 48)
    [rule] = parse_rules("tmp/**=1d", tmp_path)
    plan = plan_rule(rule, now=datetime.now(timezone.utc), cancel=threading.Event())
    assert len(plan.candidates) == 2
    change(tmp_path / "tmp/session")

    result = apply_plan(plan, cancel=threading.Event())

    assert (tmp_path / "tmp/session").exists() == stays
    assert (result.dirs_removed, result.changed) == ((0, 1) if stays else (1, 0))
