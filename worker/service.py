"""`run`: the long-running worker. APScheduler fires the backup and cleanup jobs; SIGTERM or SIGINT stops it
within 10 s (running jobs are told to stop and leave only temporary files, which the next start removes)."""

from datetime import datetime, timezone
import os
import signal
import threading

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
import structlog

from jobs.backups import list_backups, newest_verified
from jobs.errors import BusyError
from jobs.pipeline import remove_stale
from worker import __version__, health
from worker.commands import Context, backup_job, cleanup_job
from worker.crontab import period
from worker.freshness import configured_sets
from worker.lock import exclusive

log = structlog.get_logger("worker.service")

STOP_GRACE_S = 8.0  # running jobs get this long to stop cleanly after SIGTERM
HARD_STOP_S = 9  # then the process ends regardless


def needs_catch_up(ctx: Context, now: datetime) -> tuple[bool, str]:
    """Return whether the newest verified local backup is older than one schedule period, and why."""
    backups, _ = list_backups(ctx.local)
    newest = newest_verified(backups)
    if newest is None:
        return True, "there is no verified backup yet"
    gap = period(ctx.config.backup_trigger, now.astimezone(ctx.config.timezone))
    age = now - newest.created_at
    if gap is not None and age > gap:
        return True, f"the newest backup {newest.id} is {int(age.total_seconds())} s old, more than one schedule period"
    return False, f"the newest backup {newest.id} is recent"


def serve(ctx: Context) -> int:
    """Run the scheduler until SIGTERM or SIGINT; return 0 on a clean stop."""
    stop = threading.Event()
    received: list[str] = []

    def on_signal(number: int, _frame: object) -> None:
        if stop.is_set():
            log.warning("worker.forced_exit", signal=signal.Signals(number).name)
            os._exit(1)
        received.append(signal.Signals(number).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        with exclusive(ctx.config.backup_dir):
            remove_stale(ctx.local)
    except BusyError:
        pass  # a manual backup is running; its own cycle cleans up

    scheduler = BackgroundScheduler(
        timezone=ctx.config.timezone,
        executors={"default": ThreadPoolExecutor(max_workers=3)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
    )
    scheduler.add_job(backup_job, ctx.config.backup_trigger, args=[ctx], id="backup", name="backup")
    if ctx.config.cleanup_rules:
        scheduler.add_job(cleanup_job, ctx.config.cleanup_trigger, args=[ctx], id="cleanup", name="cleanup")
    now = datetime.now(timezone.utc)
    catch_up, why = needs_catch_up(ctx, now)
    if catch_up:
        scheduler.add_job(backup_job, args=[ctx], id="backup-catch-up", name="backup", next_run_time=now)
    monitor = health.start(ctx.config, ctx.catalog, configured_sets(ctx.config, ctx.cwd))  # None without HEALTH_PORT
    scheduler.start()
    log.info(
        "worker.started",
        version=__version__,
        backup_dir=str(ctx.config.backup_dir),
        source=(ctx.source().describe()),
        catch_up=catch_up,
        catch_up_reason=why,
        next_runs={job.id: job.next_run_time.isoformat() for job in scheduler.get_jobs() if job.next_run_time},
        schedules={"backup": ctx.config.schedule, "cleanup": ctx.config.cleanup_schedule if ctx.config.cleanup_rules else None},
        timezone=ctx.config.timezone.key,
    )
    while not stop.wait(1.0):
        pass
    log.info("worker.stopping", signal=received[0] if received else None)
    if monitor is not None:
        monitor.stop()  # within health.POLL_S
    # A hard deadline that needs no Python thread and no GIL: if a job is stuck inside a C call that holds
    # the GIL, the kernel ends the process (SIGALRM's default action) before the 10 s promise runs out.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(HARD_STOP_S)
    ctx.cancel.set()
    stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, name="shutdown", daemon=True)
    stopper.start()
    stopper.join(STOP_GRACE_S)
    if stopper.is_alive():
        log.warning("worker.stop_timeout", detail=f"a job did not stop within {STOP_GRACE_S:.0f} s; its temporary files are removed on the next start")
        os._exit(1)
    log.info("worker.stopped")
    return 0
