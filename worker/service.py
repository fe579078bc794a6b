"""The long-running worker behind the `run` verb (worker/actions/run.py). APScheduler fires the backup and
cleanup jobs; SIGTERM or SIGINT stops it within 10 s (running jobs are told to stop and leave only temporary
files, which the next start removes).

With `--exec COMMAND` the worker also starts the app as its child (see `worker/child.py` for the process-group
and orphan decisions): stop signals go to the app, the app's exit stops the jobs, and the worker exits with the
app's exit status. Our own failures (a failed backup, a scheduler that cannot start) never stop the app.

With RESTORE_ON_START=if-missing, lost databases are restored before anything else (worker/recover.py):
before the RETENTION_RULES check and the pg_dump preflight, the schedule with its catch-up backup, and the app.
A restore at start that fails ends `run` with exit 1 and one sentence, the app never started; a stop signal
during it stops it and `run` exits 0.
"""

from collections import deque
from datetime import datetime, timezone
import os
import signal
import threading
import time

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
import structlog

from jobs import selection
from jobs.backups import list_backups
from jobs.pipeline import remove_stale
from jobs.errors import Cancelled
from worker import __version__, child, health, preflight
from worker.actions.backup import backup_job
from worker.actions.cleanup import cleanup_job
from worker.actions.drill import drill_job
from worker.context import Context, UsageError
from worker.crontab import period
from worker.monitoring.freshness import configured_sets
from worker.purge import require_rules_fit
from worker.recover import restore_at_start
from worker.lock import free_sets
from worker.runs import settle_interrupted

log = structlog.get_logger("worker.service")

STOP_GRACE_S = 8.0  # running jobs get this long to stop cleanly after SIGTERM
APP_GRACE_S = 8.0  # the app gets this long after the forwarded signal; then it and its process group are SIGKILLed
HARD_STOP_S = 9  # then the process ends regardless
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Passed on to the app and otherwise ignored by the worker, as an init would: reload (HUP), log reopening or
# worker counts (USR1/USR2), a terminal's Ctrl-\ (QUIT) and window size (WINCH), which reach only our group.
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
REAP_EVERY_S = 2.0


def stale_sets(ctx: Context, now: datetime) -> dict[str, str]:
    """Return each configured set whose newest sound local backup (`jobs.selection`: one dated in the future
    never counts) is missing or older than one schedule period, with why. Other sets in the backup directory
    never count."""
    gap = period(ctx.config.backup_trigger, now.astimezone(ctx.config.timezone))
    stale = {}
    for backup_set in ctx.backup_sets():
        backups, _ = list_backups(ctx.local, backup_set)
        newest = selection.newest(backups, selection.Purpose.CATCH_UP, now)
        age = now - newest.created_at if newest else None
        ahead = selection.future(backups, now)
        if newest is None:
            stale[backup_set.name] = "there is no verified backup yet" + (
                f" (not counting {len(ahead)} dated in the future, like {ahead[0].id})" if ahead else "")
        elif gap is not None and age > gap:
            stale[backup_set.name] = f"the newest backup {newest.id} is {int(age.total_seconds())} s old, more than one schedule period"
    return stale


def needs_catch_up(ctx: Context, now: datetime) -> tuple[bool, str]:
    """Return whether any configured set needs a catch-up backup now, and why (naming the sets when several)."""
    stale = stale_sets(ctx, now)
    if not stale:
        return False, "the newest backup of every configured set is recent"
    if len(ctx.config.sources) == 1:
        return True, next(iter(stale.values()))
    return True, "; ".join(f"{name}: {why}" for name, why in stale.items())


class _Signals:
    """What the signal handlers saw. Handlers only record (and, at the first stop signal, set the jobs' cancel
    event, as one-shot commands do); the main loop acts (forwarding included), so that nothing touches the app's
    Popen from inside a handler."""

    def __init__(self, forward: bool, cancel: threading.Event | None = None) -> None:
        self.forward = forward
        self.cancel = cancel  # set at the first stop signal: a restore at start (on the main thread) stops at once
        self.stop: int | None = None  # the first stop signal
        self.at: float | None = None  # when it came (monotonic)
        self.pending: deque[int] = deque()  # signals still to pass on to the app
        self.wake = threading.Event()

    def install(self) -> None:
        for number in STOP_SIGNALS + (FORWARDED_SIGNALS if self.forward else ()):
            signal.signal(number, self._handle)

    def _handle(self, number: int, _frame: object) -> None:
        if number in STOP_SIGNALS:
            if self.stop is None:
                self.stop, self.at = number, time.monotonic()
                if self.cancel is not None:
                    self.cancel.set()
            elif not self.forward:
                log.warning("worker.forced_exit", signal=signal.Signals(number).name)
                os._exit(1)
        if self.forward:
            self.pending.append(number)  # a second SIGINT goes on too: the app may read it as "hurry"
        self.wake.set()

    def pass_on(self, app: child.App | None) -> None:
        while self.pending:
            number = self.pending.popleft()
            if app is not None and app.poll() is None:
                if number != signal.SIGWINCH:
                    log.info("app.signal", signal=signal.Signals(number).name, pid=app.pid)
                app.send(number)


def _start_scheduler(ctx: Context) -> BackgroundScheduler:
    """Remove stale temporaries, schedule the jobs (and a catch-up backup when one is due), start, log it."""
    with free_sets(ctx.config.backup_dir, [found.name for found in ctx.backup_sets()], "start-up cleanup") as sets:
        remove_stale(ctx.local, sets)  # a set whose backup runs now (a manual one) is left to that run's cycle

    scheduler = BackgroundScheduler(
        timezone=ctx.config.timezone,
        executors={"default": ThreadPoolExecutor(max_workers=3)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
    )
    scheduler.add_job(backup_job, ctx.config.backup_trigger, args=[ctx], id="backup", name="backup")
    if ctx.config.cleanup_rules:
        scheduler.add_job(cleanup_job, ctx.config.cleanup_trigger, args=[ctx], id="cleanup", name="cleanup")
    if ctx.config.drill_trigger is not None:  # DRILL_SCHEDULE: no set lock, so a backup that falls due still runs
        scheduler.add_job(drill_job, ctx.config.drill_trigger, args=[ctx], id="drill", name="drill")
    now = datetime.now(timezone.utc)
    catch_up, why = needs_catch_up(ctx, now)
    if catch_up:  # only the sets that need it: a fresh set is not backed up again at every restart
        only = list(stale_sets(ctx, now))
        scheduler.add_job(backup_job, args=[ctx], kwargs={"only": only}, id="backup-catch-up", name="backup", next_run_time=now)
    scheduler.start()
    log.info(
        "worker.started",
        version=__version__,
        backup_dir=str(ctx.config.backup_dir),
        sources={source.name(): source.describe() for source in ctx.sources()},
        catch_up=catch_up,
        catch_up_reason=why,
        next_runs={job.id: job.next_run_time.isoformat() for job in scheduler.get_jobs() if job.next_run_time},
        schedules={"backup": ctx.config.schedule, "cleanup": ctx.config.cleanup_schedule if ctx.config.cleanup_rules else None,
                   "drill": ctx.config.drill_schedule},
        timezone=ctx.config.timezone.key,
    )
    return scheduler


def _start_app(command: str, umask: int | None) -> child.App:
    """Start the --exec command; raise UsageError (exit 2) with one sentence if it cannot start."""
    try:
        argv = child.split_command(command)
        app = child.start(argv, umask)
    except child.StartError as error:
        raise UsageError(str(error)) from None
    log.info("app.started", pid=app.pid, program=app.program)
    names = child.unexpanded_variables(argv)
    if names:
        log.warning("app.unexpanded_variables", variables=names,
                    detail="--exec runs the command without a shell, so $NAME stays as written; let the outer "
                           "shell expand it (double quotes) or use --exec \"sh -c 'exec … $NAME'\"")
    return app


def serve(ctx: Context, command: str | None = None, umask: int | None = None) -> int:
    """Run the scheduler until SIGTERM or SIGINT; return 0 on a clean stop. With `command` (--exec), start it as
    the app first, and return its exit status once it has exited and the jobs have stopped.

    First of all, with RESTORE_ON_START=if-missing, lost databases are restored (worker.recover); when
    one cannot be, JobError ends `run` (exit 1) before the checks, the schedule or the app start. Then the checks
    that read the database: RETENTION_RULES against its tables (UsageError, exit 2) and the pg_dump preflight."""
    signals = _Signals(forward=command is not None, cancel=ctx.cancel)
    signals.install()
    try:
        restore_at_start(ctx)
    except Cancelled:
        if signals.stop is None:
            raise
    if signals.stop is not None:
        log.info("worker.stopped", signal=signal.Signals(signals.stop).name, detail="told to stop before anything started")
        return 0
    require_rules_fit(ctx)  # after the restore: the tables it names exist now
    preflight.log_problems(ctx.config)  # e.g. no fitting pg_dump: logged as an error, the worker keeps running
    app = None
    if command is not None:
        app = _start_app(command, umask)
    monitor = health.start(ctx.config, ctx.catalog, configured_sets(ctx.config, ctx.cwd),  # None without HEALTH_PORT
                           backup_sets=ctx.backup_sets())
    settle_interrupted(ctx.catalog)  # runs a killed worker left `running`: marked and notified now, not at the next job
    try:
        scheduler: BackgroundScheduler | None = _start_scheduler(ctx)
    except Exception as error:
        if app is None:
            raise
        # Our failure, not the app's: it runs on without backups, and the log says so at error level.
        log.error("worker.degraded", reason=f"{type(error).__name__}: {error}",
                  detail="the scheduler could not start, so no backup or cleanup runs; the app keeps running; "
                         "fix the cause and restart the service")
        scheduler = None

    code = _wait(signals, app)
    if monitor is not None:
        monitor.stop()  # within health.POLL_S
    return _stop(ctx, scheduler, signals, app, code)


def _wait(signals: _Signals, app: child.App | None) -> int | None:
    """Wait for a stop signal or the app's exit; return the app's exit status if it exited on its own."""
    reaped_at = time.monotonic()
    while signals.stop is None:
        signals.pass_on(app)
        if app is not None:
            code = app.poll()
            if code is not None:
                log.info("app.exited", pid=app.pid, exit_code=code)
                return code
            if time.monotonic() - reaped_at >= REAP_EVERY_S:
                child.reap_orphans(app)
                reaped_at = time.monotonic()
        signals.wake.wait(0.2)
        signals.wake.clear()
    return None


def _stop(ctx: Context, scheduler: BackgroundScheduler | None, signals: _Signals, app: child.App | None,
          code: int | None) -> int:
    """Stop the jobs (and the app, if it still runs) within the 10 s promise; return the exit status."""
    began = signals.at if signals.stop is not None else time.monotonic()
    stop_name = signal.Signals(signals.stop).name if signals.stop is not None else None
    log.info("worker.stopping", signal=stop_name, **({"app_exit_code": code} if code is not None else {}))
    signals.pass_on(app)  # the stop signal reaches the app before anything else happens
    # A hard deadline that needs no Python thread and no GIL: if a job is stuck inside a C call that holds
    # the GIL, the kernel ends the process (SIGALRM's default action) before the 10 s promise runs out.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(HARD_STOP_S)
    ctx.cancel.set()
    stopper = None
    if scheduler is not None:
        stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, name="shutdown", daemon=True)
        stopper.start()
    if app is None:
        if stopper is not None:
            stopper.join(STOP_GRACE_S)
            if stopper.is_alive():
                log.warning("worker.stop_timeout", detail=f"a job did not stop within {STOP_GRACE_S:.0f} s; its temporary files are removed on the next start")
                os._exit(1)
        log.info("worker.stopped")
        return 0

    killed = jobs_late = False
    while True:
        signals.pass_on(app)
        if code is None:
            code = app.poll()
            if code is not None:
                log.info("app.exited", pid=app.pid, exit_code=code)
        jobs_done = stopper is None or not stopper.is_alive()
        if code is not None and (jobs_done or jobs_late):
            break
        waited = time.monotonic() - began
        if code is None and not killed and waited >= APP_GRACE_S:
            log.warning("app.killed", pid=app.pid,
                        detail=f"the app did not exit within {APP_GRACE_S:.0f} s of the stop signal; "
                               "it and its process group were sent SIGKILL")
            app.kill_group()
            killed = True
        if not jobs_done and not jobs_late and waited >= STOP_GRACE_S:
            log.warning("worker.stop_timeout", detail=f"a job did not stop within {STOP_GRACE_S:.0f} s; its temporary files are removed on the next start")
            jobs_late = True
        if waited >= HARD_STOP_S - 0.2:
            break
        time.sleep(0.05)
    if code is None:  # SIGKILLed but not yet gone (stuck in the kernel): report it as killed
        code = child.exit_code(-signal.SIGKILL)
    log.info("worker.stopped", exit_code=code)
    if jobs_late:
        os._exit(code)  # a job thread is still running; interpreter shutdown would wait for it
    signal.alarm(0)  # everything has stopped: the exit status must be the app's, not SIGALRM's
    return code
