"""One function per verb. Each returns the process exit code; jobs run inside `run_job` so that every run is
logged and recorded, and anything they print for people goes to stdout."""

from dataclasses import dataclass, field
from datetime import datetime, timezone
import json
from pathlib import Path
import sys
import tempfile
import threading
from typing import Any

import structlog

from jobs import engines, offsite, pipeline, restore as restoring, retention
from jobs.artifacts import ensure_dir, parse_iso, temp_prefix, utc_iso
from jobs.backups import Backup, find, list_backups, newest_verified
from jobs.cleanup import run_cleanup
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.destinations.s3 import S3Destination
from jobs.durations import format_duration
from jobs.engines import Source
from jobs.errors import NotFound
from worker import __version__
from worker.catalog import Catalog, open_catalog
from worker.config import Config
from worker.crontab import next_fire_times
from worker.freshness import status_extras, status_lines
from worker.lock import exclusive
from worker.runs import Outcome, run_job

log = structlog.get_logger("worker.commands")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked (exit 2)."""


@dataclass
class Context:
    config: Config
    cwd: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    _catalog: Catalog | None = None
    _remote: Destination | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.config.catalog_url)
        return self._catalog

    @property
    def local(self) -> LocalDestination:
        return LocalDestination(self.config.backup_dir)

    def source(self) -> Source:
        if not self.config.source_url:
            raise UsageError("BACKUP_SOURCE is not set; set it (or DATABASE_URL) to the database to back up, like sqlite:////app/data/app.db")
        return engines.open_source(self.config.source_url, self.cwd)

    def remote(self) -> Destination | None:
        settings = self.config.s3
        if settings is None:
            return None
        if self._remote is None:
            self._remote = S3Destination(settings.bucket, settings.prefix, settings.endpoint_url, settings.region)
        return self._remote

    def policies(self) -> list[tuple[Destination, retention.Policy]]:
        """Return each destination with its retention policy: local, then the bucket when configured."""
        cfg = self.config
        sides: list[tuple[Destination, retention.Policy]] = [(self.local, retention.Policy(cfg.retention_days, cfg.keep_min))]
        remote = self.remote()
        if remote is not None:
            sides.append((remote, retention.Policy(cfg.s3.retention_days if cfg.s3 else None, cfg.keep_min)))
        return sides

    def settings(self, upload: bool = True) -> pipeline.BackupSettings:
        (_, policy), *remote_side = self.policies()
        remote, remote_policy = remote_side[0] if upload and remote_side else (None, None)
        return pipeline.BackupSettings(
            backup_dir=self.config.backup_dir,
            compression_level=self.config.compression_level,
            policy=policy,
            remote=remote,
            remote_policy=remote_policy,
            worker_version=__version__,
        )


def say(text: str = "") -> None:
    print(text, flush=True)


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_age(seconds: float) -> str:
    """Return an age like `2d03h`, `5h07m` or `4m09s`."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def report_failure(outcome: Outcome) -> int:
    """Print one sentence on stderr for a run that did not succeed; return its exit code."""
    if outcome.ok:
        return EXIT_OK
    where = f" at stage {outcome.stage}" if outcome.stage else ""
    print(f"{outcome.job} {outcome.outcome}{where}: {outcome.reason}", file=sys.stderr, flush=True)
    return EXIT_FAILED


# --- backup ---------------------------------------------------------------------------------------------------

def backup_job(ctx: Context, upload: bool = True) -> Outcome:
    """Run one backup cycle under the backup lock, as the job `backup`."""

    def work() -> dict[str, Any]:
        source = ctx.source()
        with exclusive(ctx.config.backup_dir):
            return pipeline.run_cycle(source, ctx.settings(upload), ctx.cancel)

    return run_job("backup", ctx.catalog, work)


def cmd_backup(ctx: Context, no_upload: bool) -> int:
    ctx.source()  # a missing BACKUP_SOURCE is a usage error, before any run starts
    outcome = backup_job(ctx, upload=not no_upload)
    if outcome.ok:
        say(f"backup {outcome.fields['artifact']} written to {ctx.config.backup_dir} "
            f"({human_size(outcome.fields['raw_size'])} -> {human_size(outcome.fields['size'])}, "
            f"{outcome.fields['verified']} passed)")
        if outcome.fields.get("uploaded"):
            say(f"uploaded {', '.join(outcome.fields['uploaded'])} to {ctx.remote().url()}")
    return report_failure(outcome)


# --- list -----------------------------------------------------------------------------------------------------

def _merged(ctx: Context, remote_too: bool) -> list[dict[str, Any]]:
    local, problems = list_backups(ctx.local)
    for problem in problems:
        log.warning("list.skipped_file", problem=problem)
    rows: dict[str, dict[str, Any]] = {b.id: {**b.manifest, "location": "local"} for b in local}
    remote = ctx.remote() if (remote_too or not local) else None
    if remote is not None:
        found, problems = list_backups(remote)
        for problem in problems:
            log.warning("list.skipped_object", problem=problem)
        for backup in found:
            if backup.id in rows:
                rows[backup.id]["location"] = "both"
            else:
                rows[backup.id] = {**backup.manifest, "location": "s3"}
    return sorted(rows.values(), key=lambda row: (row["created_at"], row["id"]), reverse=True)


def cmd_list(ctx: Context, as_json: bool, remote: bool) -> int:
    if remote and ctx.config.s3 is None:
        raise UsageError("--remote needs S3_BUCKET (and its credentials) to be set")
    rows = _merged(ctx, remote)
    if as_json:
        say(json.dumps(rows, indent=2, sort_keys=True))
        return EXIT_OK
    if not rows:
        say(f"no backups in {ctx.config.backup_dir}" + (" or the bucket" if ctx.config.s3 else ""))
        return EXIT_OK
    header = f"{'ID':<40} {'CREATED (UTC)':<21} {'AGE':>8} {'SIZE':>10} {'RAW':>10}  {'VERIFIED':<24} LOCATION"
    say(header)
    now = datetime.now(timezone.utc)
    for row in rows:
        age = human_age((now - parse_iso(row["created_at"])).total_seconds())
        verified = row["verified"].get("check", "yes") if isinstance(row.get("verified"), dict) else "no"
        say(f"{row['id']:<40} {row['created_at']:<21} {age:>8} {human_size(row['size']):>10} "
            f"{human_size(row.get('raw_size')):>10}  {verified:<24} {row['location']}")
    return EXIT_OK


# --- verify and restore ---------------------------------------------------------------------------------------

def _select(backups: list[Backup], wanted: str | None, where: str) -> Backup:
    if wanted:
        return find(backups, wanted)
    newest = newest_verified(backups)
    if newest is not None:
        return newest
    raise NotFound(f"there are no backups in {where}; run `python -m worker backup` first")


def _where(ctx: Context, remote: bool) -> tuple[Destination, str]:
    if remote:
        destination = ctx.remote()
        if destination is None:
            raise UsageError("--remote and --from-s3 need S3_BUCKET (and its credentials) to be set")
        return destination, destination.url()
    return ctx.local, ctx.local.url()


def cmd_verify(ctx: Context, wanted: str | None, remote: bool) -> int:
    destination, where = _where(ctx, remote)

    def work() -> dict[str, Any]:
        backups, _ = list_backups(destination)
        backup = _select(backups, wanted, where)
        with tempfile.TemporaryDirectory(prefix=temp_prefix() + "verify-", dir=_workdir(ctx)) as workdir:
            artifact = _fetch(ctx, destination, backup, Path(workdir))
            with restoring.proven_raw(artifact, backup, Path(workdir), ctx.cancel) as (_, checks):
                pass
        return {"backup": backup.id, "location": destination.location, "checks": checks}

    outcome = run_job("verify", ctx.catalog, work)
    if outcome.ok:
        say(f"{outcome.fields['backup']} is sound: {', '.join(outcome.fields['checks'])} passed")
    return report_failure(outcome)


def _workdir(ctx: Context) -> Path:
    ensure_dir(ctx.config.backup_dir)
    return ctx.config.backup_dir


def _fetch(ctx: Context, destination: Destination, backup: Backup, workdir: Path) -> Path:
    """Return a local path to the backup's artifact: the file itself when local, else a download into workdir."""
    if isinstance(destination, LocalDestination):
        return destination.path(backup.artifact)
    target = workdir / backup.artifact
    destination.get(backup.artifact, target, ctx.cancel)
    return target


def confirm(question: str, assume_yes: bool) -> None:
    """Ask a person to type `yes`; raise UsageError when nobody can answer and --yes is missing."""
    if assume_yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — refusing without confirmation; run it in a terminal or add --yes")
    print(f"{question}\nType yes to continue: ", end="", file=sys.stderr, flush=True)
    if sys.stdin.readline().strip().lower() != "yes":
        raise UsageError("restore cancelled; nothing was changed")


def cmd_restore(ctx: Context, wanted: str | None, from_s3: bool, to: Path | None, target_url: str | None,
                assume_yes: bool, fallback: bool = False) -> int:
    if target_url:
        raise UsageError("--target-url restores into a PostgreSQL or Redis server, which this version does not support yet; use --to PATH")
    destination, where = _where(ctx, from_s3)
    if to is not None:
        to = to.resolve()
        problem = restoring.new_file_problem(to)
        if problem:
            raise UsageError(problem)
    source = None if to else ctx.source()
    if source is not None:
        confirm(f"This replaces the live database {source.target()} with a backup (its current content is saved first). "
                "Stop the app's writers before you go on; open connections will see the restored data", assume_yes)
    workdir = to.parent if to else _workdir(ctx)

    def work() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix=temp_prefix() + "restore-", dir=workdir) as scratch:
            if from_s3:
                backup, artifact, notes = offsite.pick_restorable(destination, Path(scratch), ctx.cancel, wanted, fallback)
                for note in notes:
                    log.warning("restore.note", note=note)
            else:
                backups, _ = list_backups(destination)
                backup = _select(backups, wanted, where)
                artifact = _fetch(ctx, destination, backup, Path(scratch))
            log.info("restore.selected", backup=backup.id, location=destination.location, created_at=backup.manifest["created_at"])
            if to is not None:
                checks = restoring.restore_to_file(artifact, backup, to, ctx.cancel)
                return {"backup": backup.id, "restored_to": str(to), "checks": checks}
            safety, checks = restoring.restore_over(artifact, backup, source, _workdir(ctx), ctx.cancel)
            fields = {"backup": backup.id, "restored_to": source.target(), "checks": checks}
            return {**fields, "safety_copy": str(safety)} if safety else fields

    outcome = run_job("restore", ctx.catalog, work)
    if outcome.ok:
        say(f"restored {outcome.fields['backup']} from {destination.location} to {outcome.fields['restored_to']} "
            f"({', '.join(outcome.fields['checks'])} passed)")
        if "safety_copy" in outcome.fields:
            say(f"the previous database was saved as {outcome.fields['safety_copy']}")
    return report_failure(outcome)


# --- prune and cleanup ----------------------------------------------------------------------------------------

def cmd_prune(ctx: Context, dry_run: bool) -> int:
    def work() -> dict[str, Any]:
        sides = ctx.policies()
        with exclusive(ctx.config.backup_dir):
            fields: dict[str, Any] = {"dry_run": dry_run}
            for destination, side_policy in sides:
                plan = pipeline.plan_retention(destination, side_policy)
                say(f"{destination.location}: keep {len(plan.keep)}, delete {len(plan.delete)}"
                    + (" (dry run: nothing deleted)" if dry_run else ""))
                for row in plan.describe():
                    say(f"  {row['action']:<6} {row['id']:<40} {row['reason']}")
                if not dry_run:
                    pipeline.carry_out(destination, plan)
                fields[f"{destination.location}_delete"] = [b.id for b in plan.delete]
            return fields

    return report_failure(run_job("prune", ctx.catalog, work))


def cleanup_job(ctx: Context, dry_run: bool = False) -> Outcome:
    def work() -> dict[str, Any]:
        report = run_cleanup(ctx.config.cleanup_rules, dry_run=dry_run, now=None, cancel=ctx.cancel,
                             guard=ctx.config.cleanup_guard)
        return report.fields()

    return run_job("cleanup", ctx.catalog, work)


def cmd_cleanup(ctx: Context, dry_run: bool) -> int:
    if not ctx.config.cleanup_rules:
        say("no CLEANUP_RULES are set; nothing to do")
    outcome = cleanup_job(ctx, dry_run)
    if outcome.ok:
        verb = "would remove" if dry_run else "removed"
        for rule in outcome.fields["rules"]:
            state = " (directory missing)" if rule["missing"] else ""
            say(f"  {rule['rule']}: {rule['files']} files, {human_size(rule['bytes'])}{state}")
            for path in rule.get("would_remove", []):
                say(f"    {path}")
            for error in rule.get("errors", []):
                say(f"    not removed: {error}")
        say(f"cleanup {verb} {outcome.fields['files']} files, {human_size(outcome.fields['bytes'])}"
            + (f"; {outcome.fields['failed']} could not be removed" if outcome.fields["failed"] else ""))
    return report_failure(outcome)


# --- status and config ----------------------------------------------------------------------------------------

def _utc(moment: datetime) -> str:
    """Return a catalog time as ISO 8601 UTC; SQLite hands back naive datetimes, which we always wrote in UTC."""
    return utc_iso(moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc))


def status_report(ctx: Context, now: datetime | None = None) -> dict[str, Any]:
    """Return the status document: last outcome per job, the newest verified backup and its age, next runs."""
    now = now or datetime.now(timezone.utc)
    backups, _ = list_backups(ctx.local)
    newest = newest_verified(backups)
    age = (now - newest.created_at) if newest else None
    fresh = age is not None and age <= ctx.config.freshness_limit
    jobs = {}
    for job, row in ctx.catalog.last_runs().items():
        jobs[job] = {key: (_utc(value) if isinstance(value, datetime) else value)
                     for key, value in row.items() if key in ("run_id", "started_at", "outcome", "stage", "reason", "artifact", "duration_s")}
    local_now = now.astimezone(ctx.config.timezone)
    triggers = {"backup": ctx.config.backup_trigger}
    if ctx.config.cleanup_rules:
        triggers["cleanup"] = ctx.config.cleanup_trigger
    next_runs = {job: next((t.isoformat() for t in next_fire_times(trigger, local_now, 1)), None)
                 for job, trigger in triggers.items()}
    return {
        "healthy": fresh,
        "freshness_limit": format_duration(ctx.config.freshness_limit),
        "newest_backup": newest.id if newest else None,
        "newest_backup_created_at": newest.manifest["created_at"] if newest else None,
        "newest_backup_age_s": int(age.total_seconds()) if age is not None else None,
        "backups": len(backups),
        "jobs": jobs,
        "next_runs": next_runs,
        **status_extras(ctx.config, ctx.catalog),  # last_failure, disk (worker/freshness.py)
    }


def cmd_status(ctx: Context, as_json: bool) -> int:
    report = status_report(ctx)
    if as_json:
        say(json.dumps(report, indent=2, sort_keys=True))
    else:
        if report["newest_backup"]:
            age = human_age(report["newest_backup_age_s"])
            say(f"newest backup: {report['newest_backup']} ({age} old, limit {report['freshness_limit']})")
        else:
            say(f"newest backup: none in {ctx.config.backup_dir}")
        say(f"health: {'ok' if report['healthy'] else 'STALE: no verified backup within ' + report['freshness_limit']}")
        for job, row in sorted(report["jobs"].items()):
            detail = f" at {row['stage']}: {row['reason']}" if row.get("reason") else ""
            say(f"last {job}: {row['outcome']} ({row['started_at']}){detail}")
        for job, when in report["next_runs"].items():
            say(f"next {job}: {when}")
        for line in status_lines(report):
            say(line)
    return EXIT_OK if report["healthy"] else EXIT_FAILED


def cmd_config(ctx: Context) -> int:
    for key, value in ctx.config.describe().items():
        if isinstance(value, list):
            value = ";".join(value)
        say(f"{key}={'' if value is None else value}")
    return EXIT_OK
