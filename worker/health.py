"""`/healthz` and `/metrics` over HTTP for `run` (HEALTH_PORT), served from their own threads.

What they show is computed from the backup directory (manifests, read without the backup lock) and the catalog,
and cached for a few seconds: a slow scrape never waits for a backup, a backup never waits for a scrape, and
this process's own backup outcomes refresh the cache at once.

With S3_BUCKET set, freshness is judged on the newest sound backup in the bucket (worker.monitoring). The bucket
is listed from a thread of its own (OffsiteCache), at most every REFRESH_S and again after each backup of this
process, so a scrape never waits on S3 (only the very first, at most WAIT_S, for the first listing). A listing
that fails leaves the last good one in use for GRACE_S (a blip of the network is not an outage); after that, or
before any listing succeeded, the off-site age is unknown: /healthz answers 503 with status `offsite_unknown`
and `offsite_error`, and the off-site gauge is absent. Run counters count this process's runs since it
started (a Prometheus counter resets with its process; `rate()` and `increase()` expect that); the last duration
of each job starts from the catalog, so it is there before the first run.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
import threading
import time
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
import structlog

from jobs.artifacts import BackupSet
from jobs.backups import Backup, list_backups
from jobs.destinations.local import LocalDestination
from worker.catalog import Catalog, catalog_time
from worker.monitoring.freshness import Offsite, SetFreshness, list_offsite, offsite_destination
from worker.monitoring.drills import SetDrill, last_drills
from worker.monitoring.status import Status, measure
from worker.runs import Outcome, add_listener

if TYPE_CHECKING:
    from worker.config import Config

log = structlog.get_logger("worker.health")

CACHE_S = 3.0
POLL_S = 0.2  # how often the server thread looks for a stop request
OUTCOMES = ("succeeded", "failed", "skipped")
REFRESH_S = 60.0  # the bucket is listed at most this often (each listing is a billed request, and slow)
WAIT_S = 2.0  # the longest a scrape waits, only for the first listing since start
GRACE_S = 900.0  # how long the last good listing stands in for a bucket that cannot be listed now


class OffsiteCache:
    """The bucket as /healthz and /metrics see it: listed in a background thread, never while a scrape waits
    (but the first, WAIT_S at most); see the module docstring."""

    def __init__(self, lister: Callable[[], Offsite], refresh_s: float = REFRESH_S, wait_s: float = WAIT_S,
                 grace_s: float = GRACE_S) -> None:
        self._lister = lister
        self._refresh_s, self._wait_s, self._grace_s = refresh_s, wait_s, grace_s
        self._lock = threading.Lock()
        self._last: Offsite | None = None  # the last listing, good or not
        self._good: Offsite | None = None  # the last listing that succeeded
        self._began = float("-inf")  # when the last listing started (time.monotonic())
        self._thread: threading.Thread | None = None
        self._first = threading.Event()  # a listing has finished
        self._waited = False  # a scrape already waited for the first listing: no other one waits

    def invalidate(self) -> None:
        """The bucket changed (this process backed up): list it again at the next look."""
        with self._lock:
            self._began = float("-inf")

    def get(self) -> Offsite:
        """Return the bucket as last listed (see the module docstring), starting a listing in the background when
        the last one is older than the refresh interval."""
        with self._lock:
            busy = self._thread is not None and self._thread.is_alive()
            if not busy and time.monotonic() - self._began >= self._refresh_s:
                self._began = time.monotonic()
                self._thread = threading.Thread(target=self._list, name="health-offsite", daemon=True)
                self._thread.start()
            wait, self._waited = not self._waited, True
        if wait:
            self._first.wait(self._wait_s)
        with self._lock:
            last, good = self._last, self._good
        if last is None:
            return Offsite(None, f"the bucket has not answered its first listing within {self._wait_s:.0f} s of the scrape")
        if last.backups is None and good is not None and time.monotonic() - (good.listed_at or 0) <= self._grace_s:
            return good
        return last

    def _list(self) -> None:
        found = self._lister()
        if found.backups is None:
            log.warning("health.offsite_unlisted", error=found.error)
        with self._lock:
            self._last = found
            if found.backups is not None:
                self._good = found
        self._first.set()


@dataclass(eq=False)  # hashable: the registry keys collectors by identity
class Health:
    """What /healthz and /metrics show, refreshed at most every CACHE_S seconds."""

    config: "Config"
    catalog: Catalog
    sets: list[str]
    jobs: list[str] = field(default_factory=lambda: ["backup"])
    offsite: OffsiteCache | None = None  # with S3_BUCKET: the bucket, listed in the background
    _lock: threading.Lock = field(default_factory=threading.Lock)  # guards the cache
    _counts_lock: threading.Lock = field(default_factory=threading.Lock)  # guards counts and durations
    _cached_at: float = float("-inf")
    _generation: int = 0  # bumped by every outcome; a view computed under an older one is not reused
    _seen: int = -1
    _backups: list[Backup] = field(default_factory=list)
    _last_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    drill_counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (set, outcome): this process's drills
    _drills: dict[str, SetDrill] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    def listener(self, event: str, outcome: Outcome) -> None:
        """Count this process's outcomes and drop the cache after each one (a run listener; quick)."""
        if event != "finished":
            return
        with self._counts_lock:
            key = (outcome.job, outcome.outcome)
            self.counts[key] = self.counts.get(key, 0) + 1
            if outcome.duration_s is not None:  # an interrupted run's end is not known
                self.durations[outcome.job] = outcome.duration_s
            if outcome.job == "drill":
                for name, row in (outcome.fields.get("sources") or {}).items():
                    key = (name, str(row.get("outcome")))
                    self.drill_counts[key] = self.drill_counts.get(key, 0) + 1
            self._generation += 1
        if self.offsite is not None and outcome.job == "backup":
            self.offsite.invalidate()

    def seed(self) -> None:
        """Start each job's last duration from the catalog, and show its run counters at 0."""
        last = self.catalog.last_runs()
        with self._counts_lock:
            for job in {*self.jobs, *last}:
                for outcome in OUTCOMES:
                    self.counts.setdefault((job, outcome), 0)
            for job, row in last.items():
                if row.get("duration_s") is not None:
                    self.durations.setdefault(job, float(row["duration_s"]))
            if self.config.drill_schedule:
                for name in self.sets:
                    for outcome in ("succeeded", "failed"):
                        self.drill_counts.setdefault((name, outcome), 0)

    def _refresh(self) -> tuple[list[Backup], dict[str, dict[str, Any]]]:
        with self._lock:
            generation = self._generation
            if generation != self._seen or time.monotonic() - self._cached_at > CACHE_S:
                backups, _ = list_backups(LocalDestination(self.config.backup_dir))
                self._backups, self._last_runs = backups, self.catalog.last_runs()
                self._drills = last_drills(self.catalog, self.sets or None)
                self._cached_at, self._seen = time.monotonic(), generation
            return self._backups, self._last_runs

    def status(self, now: datetime | None = None) -> Status:
        """Return the status model of the configured sets now (worker.monitoring.status; off-site too, with a bucket)."""
        backups, last_runs = self._refresh()
        offsite = self.offsite.get() if self.offsite is not None else None
        return measure(self.config, backups, self.sets, last_runs, offsite, now, self._drills)

    def healthz(self, now: datetime | None = None) -> tuple[int, dict[str, Any]]:
        """Return the HTTP status (200 fresh, 503 stale, no backup, off-site age unknown, or a set's last drill
        failed) and the JSON document of SPEC's Health."""
        now = now or datetime.now(timezone.utc)
        state = self.status(now)
        deciding = state.deciding

        def ages(s: SetFreshness) -> dict[str, Any]:
            return {"newest_backup_age_s": int(s.age_s) if s.age_s is not None else None,
                    "newest_offsite_backup_age_s": int(s.offsite_age_s) if s.offsite_age_s is not None else None}

        document = {
            "status": state.state,
            "newest_backup": deciding.describe() if deciding else None,
            "newest_offsite_backup": deciding.describe_offsite() if deciding else None,
            **(ages(deciding) if deciding else {"newest_backup_age_s": None, "newest_offsite_backup_age_s": None}),
            "offsite": state.offsite,  # S3_BUCKET is set: health is judged on the off-site copy
            "offsite_error": deciding.offsite_error if deciding else None,
            "freshness_limit_s": int(state.limit.total_seconds()),
            "sets": {s.name: {"status": s.state, "newest_backup": s.describe(), "newest_offsite_backup": s.describe_offsite(),
                              **ages(s), "offsite_error": s.offsite_error, "future_backups": list(s.future)}
                     for s in state.sets},
            "jobs": {job: {"outcome": row.get("outcome"), "finished_at": catalog_time(row.get("finished_at")),
                           "stage": row.get("stage"), "reason": row.get("reason"), "duration_s": row.get("duration_s")}
                     for job, row in sorted(state.last_runs.items())},
            "disk": state.disk.describe(),
            "drills": {name: drill.describe(now) for name, drill in sorted(state.drills.items())},
        }
        if state.state == "drill_failed":
            document["reason"] = "; ".join(drill.sentence() for drill in state.drill_failures)
        return (200 if state.healthy else 503), document

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (prometheus_client's Collector protocol)."""
        state = self.status(datetime.now(timezone.utc))
        age = GaugeMetricFamily("backup_worker_newest_backup_age_seconds",
                                "Age of the newest verified backup of each backup set", labels=["set"])
        offsite_age = GaugeMetricFamily("backup_worker_newest_offsite_backup_age_seconds",
                                        "Age of the newest verified backup of each backup set that is in the bucket",
                                        labels=["set"])
        size = GaugeMetricFamily("backup_worker_newest_backup_size_bytes",
                                 "Size of the newest verified backup's artifact, per backup set", labels=["set"])
        fresh = GaugeMetricFamily("backup_worker_backup_fresh",
                                  "1 when the set's newest verified backup (in the bucket, with S3_BUCKET) is within "
                                  "FRESHNESS_LIMIT, else 0", labels=["set"])
        for s in state.sets:
            fresh.add_metric([s.name], 1.0 if s.fresh else 0.0)
            if s.newest is not None:
                age.add_metric([s.name], float(s.age_s or 0.0))
                size.add_metric([s.name], float(s.newest.size))
            if s.offsite_newest is not None:
                offsite_age.add_metric([s.name], float(s.offsite_age_s or 0.0))
        yield from (age, size, fresh)
        if state.offsite:
            yield offsite_age
        yield GaugeMetricFamily("backup_worker_freshness_limit_seconds", "FRESHNESS_LIMIT in seconds",
                                value=state.limit.total_seconds())
        runs = CounterMetricFamily("backup_worker_job_runs", "Job runs of this process by outcome", labels=["job", "outcome"])
        duration = GaugeMetricFamily("backup_worker_job_last_duration_seconds", "Duration of each job's last run",
                                     labels=["job"])
        with self._counts_lock:
            for (job, outcome), count in sorted(self.counts.items()):
                runs.add_metric([job, outcome], float(count))
            for job, seconds in sorted(self.durations.items()):
                duration.add_metric([job], seconds)
        yield from (runs, duration)
        now = datetime.now(timezone.utc)
        drill_age = GaugeMetricFamily("backup_worker_last_drill_age_seconds",
                                      "Time since each backup set's last restore drill ended", labels=["set"])
        for name, drill in sorted(state.drills.items()):
            if (age := drill.age_s(now)) is not None:
                drill_age.add_metric([name], age)
        drills = CounterMetricFamily("backup_worker_drill_runs", "Restore drills of this process per set by outcome",
                                     labels=["set", "outcome"])
        with self._counts_lock:
            for (name, outcome), count in sorted(self.drill_counts.items()):
                drills.add_metric([name, outcome], float(count))
        yield from (drill_age, drills)
        if state.disk.used_percent is not None:
            yield GaugeMetricFamily("backup_worker_disk_used_ratio", "Used share of the backup volume (0-1)",
                                    value=state.disk.used_percent / 100)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    health: Health
    registry: CollectorRegistry


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                code, document = self.server.health.healthz()
                self._answer(code, json.dumps(document, default=str).encode(), "application/json")
            elif path == "/metrics":
                self._answer(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
            else:
                self._answer(404, b"not found: try /healthz or /metrics\n", "text/plain; charset=utf-8")
        except Exception as error:  # a scrape that fails must not kill the server thread
            log.warning("health.error", path=path, error=f"{type(error).__name__}: {error}")
            self._answer(500, b"internal error; see the worker's log\n", "text/plain; charset=utf-8")

    def _answer(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the stdlib's signature)
        log.debug("health.request", detail=format % args)


@dataclass
class HealthServer:
    server: _Server
    thread: threading.Thread
    remove_listener: Callable[[], None]

    def stop(self) -> None:
        """Stop serving (within about POLL_S) and release the port."""
        self.remove_listener()
        self.server.shutdown()
        self.server.server_close()


def start(config: "Config", catalog: Catalog, sets: list[str], host: str = "0.0.0.0",
          backup_sets: list[BackupSet] | None = None) -> HealthServer | None:
    """Serve /healthz and /metrics on HEALTH_PORT from a thread; return the server, or None when HEALTH_PORT is
    unset or the port cannot be bound (that only logs an error: backups matter more than their dashboard).
    `backup_sets` (name and kind) are the sets whose manifests in the bucket are read (None: every set)."""
    if config.health_port is None:
        return None
    jobs = (["backup", "cleanup"] if config.cleanup_rules else ["backup"]) + (["drill"] if config.drill_schedule else [])
    bucket = offsite_destination(config)
    offsite = OffsiteCache(lambda: list_offsite(bucket, backup_sets or None)) if bucket is not None else None
    health = Health(config=config, catalog=catalog, sets=sets, jobs=jobs, offsite=offsite)
    health.seed()
    try:
        server = _Server((host, config.health_port), _Handler)
    except OSError as error:
        log.error("health.unavailable", port=config.health_port, error=error.strerror or str(error),
                  hint="another process holds HEALTH_PORT; choose a free port. Backups go on without /healthz")
        return None
    server.health = health
    server.registry = CollectorRegistry(auto_describe=False)
    server.registry.register(health)  # type: ignore[arg-type]  # Health.collect is the Collector protocol
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_S}, name="health", daemon=True)
    thread.start()
    log.info("health.serving", port=config.health_port, paths=["/healthz", "/metrics"])
    return HealthServer(server, thread, add_listener(health.listener))
