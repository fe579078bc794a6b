"""One drill at a time (issue 22, from its review): drills share DRILL_TARGET_URL and the volume's room, so a
second drill while one runs is skipped with one sentence naming the first, and drills nothing."""

from pathlib import Path

from worker import lock
from worker.actions.drill import LOCK


def test_a_drill_while_another_drill_runs_is_refused_with_one_sentence(tmp_path: Path, worker) -> None:
    assert worker("backup").code == 0
    with lock.exclusive(tmp_path / "backups", LOCK, "drill"):
        result = worker("drill")
    assert result.code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("drill ")]
    assert lines and "another drill is running" in lines[0], result.stderr
    assert worker("drill").code == 0
