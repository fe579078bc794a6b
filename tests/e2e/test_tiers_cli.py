"""Retention tiers through the CLI (issue 21): `prune --dry-run` names every rule that keeps each backup (and
`--json` gives the same as data), `prune` deletes exactly what nothing keeps, `status` shows the policy and what
each tier holds, `config` refuses a bad tier with exit 2. Real SQLite backups, copied to the dates a schedule
would have made them (their bytes, and so their SHA-256, unchanged)."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import shutil
from zoneinfo import ZoneInfo

from tests.e2e.test_selection_cli import count

BERLIN = ZoneInfo("Europe/Berlin")


def clone_at(directory: Path, artifact: str, when: datetime) -> str:
    """Copy a backup as a worker whose clock said `when` would have written it; return its id."""
    name, kind = artifact.partition("-20")[0], artifact.split(".")[-2]
    new = f"{name}-{when:%Y%m%dT%H%M%SZ}.{kind}.zst"
    manifest = json.loads((directory / f"{artifact}.json").read_text())
    manifest.update(id=new.removesuffix(".zst"), artifact=new, created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    shutil.copyfile(directory / artifact, directory / new)
    (directory / f"{new}.json").write_text(json.dumps(manifest))
    return new.removesuffix(".zst")


def history(worker, directory: Path, now: datetime) -> dict[datetime, str]:
    """One real backup, then copies of it at 02:00 Berlin time every night for the 60 nights before `now`, and
    every 6 hours of the last day; the real one removed. Return {when: id}."""
    made = worker("backup", "--no-upload")
    assert made.code == 0, made.stderr
    artifact = made.event("job.succeeded")["artifact"]
    nights = [(now.astimezone(BERLIN) - timedelta(days=days)).replace(hour=2, minute=0, second=0, microsecond=0)
              for days in range(1, 61)]
    quarters = [now - timedelta(hours=hours) for hours in (1, 7, 13, 19)]
    times = sorted({when.astimezone(timezone.utc).replace(microsecond=0) for when in nights + quarters})
    found = {when: clone_at(directory, artifact, when) for when in times}
    (directory / artifact).unlink()
    (directory / f"{artifact}.json").unlink()
    return found


TIERS = {"BACKUP_KEEP_DAILY": "7", "BACKUP_KEEP_WEEKLY": "4", "BACKUP_KEEP_MONTHLY": "3", "BACKUP_TIMEZONE": "Europe/Berlin"}


def test_prune_dry_run_names_every_rule_and_prune_deletes_exactly_what_nothing_keeps(tmp_path: Path, worker, app_db: Path) -> None:
    directory = tmp_path / "backups"
    now = datetime.now(timezone.utc)
    made = history(worker, directory, now)
    newest = made[max(made)]

    shown = worker("prune", "--dry-run", env=TIERS)
    assert shown.code == 0, shown.stderr
    assert "policy: newest 3, daily 7, weekly 4, monthly 3 (Europe/Berlin); safety backups 7d" in shown.stdout
    lines = {line.split()[1]: line for line in shown.stdout.splitlines() if line.strip().startswith(("keep ", "delete "))}
    assert set(lines) == set(made.values())
    local_day = max(made).astimezone(BERLIN)
    assert f"daily {local_day:%Y-%m-%d}" in lines[newest] and "newest 3" in lines[newest]
    assert "weekly 20" in shown.stdout and "monthly 20" in shown.stdout and "nothing keeps it" in shown.stdout
    assert sorted(path.name for path in directory.glob("*.zst")) == sorted(f"{ident}.zst" for ident in made.values())

    as_json = worker("prune", "--dry-run", "--json", env=TIERS)
    assert as_json.code == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert all(set(row) == {"id", "location", "keep", "reasons"} and row["location"] == "local" for row in rows)
    assert {row["id"] for row in rows} == set(made.values())
    for row in rows:  # the text and the data say the same
        assert lines[row["id"]].split()[0] == ("keep" if row["keep"] else "delete")
        assert bool(row["reasons"]) == row["keep"]
        assert all(reason in lines[row["id"]] for reason in row["reasons"])
    kept = {row["id"] for row in rows if row["keep"]}
    # 7 days + at most 4 weeks + 3 months, the newest 3 among them or beside them: never more than 14
    assert 10 <= len(kept) <= 14 and newest in kept

    status = worker("status", "--json", env=TIERS)
    retention = json.loads(status.stdout)["retention"]
    assert retention["local"]["holds"] == {"newest": 3, "daily": 7, "weekly": 4, "monthly": 3}
    assert retention["local"]["would_delete"] == len(made) - len(kept)
    text = worker("status", env=TIERS).stdout
    assert (f"retention (volume): newest 3, daily 7, weekly 4, monthly 3 (Europe/Berlin); safety backups 7d; holds "
            f"newest 3, daily 7, weekly 4, monthly 3; the next run deletes {len(made) - len(kept)}") in text

    pruned = worker("prune", env=TIERS)
    assert pruned.code == 0, pruned.stderr
    assert sorted(path.name for path in directory.glob("*.zst")) == sorted(f"{ident}.zst" for ident in kept)
    assert sorted(path.name for path in directory.glob("*.zst.json")) == sorted(f"{ident}.zst.json" for ident in kept)
    oldest = min(kept)  # the oldest monthly copy still restores
    target = tmp_path / "restored.db"
    assert worker("restore", oldest, "--to", str(target)).code == 0 and count(target) == 1000
    again = json.loads(worker("prune", "--dry-run", "--json", env=TIERS).stdout)
    assert all(row["keep"] for row in again)  # a second run deletes nothing more


def test_tiers_without_a_window_turn_the_window_off_and_a_window_keeps_beside_them(tmp_path: Path, worker, app_db: Path) -> None:
    directory = tmp_path / "backups"
    made = history(worker, directory, datetime.now(timezone.utc))
    only_tiers = json.loads(worker("prune", "--dry-run", "--json", env={"BACKUP_KEEP_DAILY": "2"}).stdout)
    days = sorted({when.date() for when in made}, reverse=True)[:2]  # the two newest UTC days that hold a backup
    expected = {made[when] for when in sorted(made)[-3:]} | {made[max(w for w in made if w.date() == day)] for day in days}
    assert {row["id"] for row in only_tiers if row["keep"]} == expected
    with_window = json.loads(worker("prune", "--dry-run", "--json",
                                    env={"BACKUP_KEEP_DAILY": "2", "BACKUP_RETENTION_DAYS": "10"}).stdout)
    within = [row for row in with_window if "within 10d of newest" in row["reasons"]]
    assert 9 <= len(within) <= 14 and len(with_window) == len(made)


def test_config_refuses_a_bad_tier_with_exit_2_naming_it(worker) -> None:
    for name, value in (("BACKUP_KEEP_WEEKLY", "-2"), ("S3_KEEP_DAILY", "x"), ("BACKUP_KEEP_HOURLY", "1.5")):
        result = worker("config", env={name: value, "S3_BUCKET": "bucket"})
        assert result.code == 2 and name in result.stderr and "Traceback" not in result.stderr
    shown = worker("config", env={"BACKUP_KEEP_MONTHLY": "12"})
    assert shown.code == 0 and "BACKUP_KEEP_MONTHLY" in shown.stdout
