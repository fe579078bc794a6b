"""Freshness with a bucket (worker.monitoring.freshness.evaluate): the newest sound backup in the bucket decides; and the
bucket as /healthz sees it (worker.health.OffsiteCache): listed in the background, never holding a scrape up."""

from datetime import datetime, timedelta, timezone
import threading
import time

import pytest

from jobs.backups import Backup
from worker.monitoring.freshness import Offsite, evaluate
from worker.health import OffsiteCache

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=timezone.utc)
LIMIT = timedelta(hours=26)


def backup(hours_old: float, name: str = "app", stored: int | None = 10) -> Backup:
    stamp = NOW - timedelta(hours=hours_old)
    artifact = f"{name}-{stamp:%Y%m%dT%H%M%SZ}.sqlite.zst"
    return Backup(id=artifact.removesuffix(".zst"), artifact=artifact, created_at=stamp, size=10, sha256="0" * 64,
                  verified=True, manifest={"created_at": stamp.isoformat()}, stored_size=stored)


@pytest.mark.parametrize(("case", "local", "remote", "fresh", "state", "offsite_age_h"), [
    ("no bucket: the volume decides", [backup(1)], None, True, "ok", None),
    ("in the bucket too", [backup(1)], [backup(1)], True, "ok", 1),
    ("uploads failing for two days", [backup(1), backup(48)], [backup(48)], False, "stale", 48),
    ("uploads failing for a while, within the limit", [backup(1)], [backup(20)], True, "ok", 20),
    ("nothing uploaded yet", [backup(1)], [], False, "stale", None),
    ("damaged in the bucket does not count", [backup(1)], [backup(1, stored=3), backup(30)], False, "stale", 30),
    ("another set's upload does not count", [backup(1)], [backup(1, name="other")], False, "stale", None),
    ("a backup only in the bucket counts (the volume was lost)", [], [backup(2)], True, "ok", 2),
])
def test_the_newest_sound_backup_in_the_bucket_decides(case, local, remote, fresh, state, offsite_age_h) -> None:
    offsite = None if remote is None else Offsite(remote)
    (result,) = evaluate(local, ["app"], LIMIT, NOW, offsite).sets
    assert (result.fresh, result.state) == (fresh, state), case
    assert result.offsite_age_s == (offsite_age_h * 3600 if offsite_age_h is not None else None), case
    if local:
        assert result.age_s == 3600, case


def test_a_bucket_that_cannot_be_listed_makes_the_off_site_age_unknown_and_the_set_unhealthy() -> None:
    (result,) = evaluate([backup(1)], ["app"], LIMIT, NOW, Offsite(None, "cannot reach the bucket")).sets
    assert not result.fresh and result.state == "offsite_unknown" and result.offsite_age_s is None
    assert result.age_s == 3600 and "cannot reach the bucket" in result.why_stale("26h")


class Lister:
    """Returns what it is told to, after `delay` seconds; counts its calls."""

    def __init__(self) -> None:
        self.answer = Offsite([backup(1)], None, time.monotonic())
        self.delay = 0.0
        self.calls = 0
        self.release = threading.Event()

    def __call__(self) -> Offsite:
        self.calls += 1
        self.release.wait(self.delay)
        return self.answer if self.answer.backups is None else Offsite(self.answer.backups, None, time.monotonic())


def test_a_hanging_bucket_holds_the_first_scrape_for_the_wait_at_most_and_later_ones_not_at_all() -> None:
    lister = Lister()
    lister.delay = 30
    cache = OffsiteCache(lister, refresh_s=0.0, wait_s=0.3)
    began = time.monotonic()
    first = cache.get()
    assert 0.25 <= time.monotonic() - began < 1 and first.backups is None and "not answered" in first.error
    began = time.monotonic()
    for _ in range(5):
        cache.get()
    assert time.monotonic() - began < 0.5 and lister.calls == 1  # one listing at a time
    lister.release.set()


def test_the_last_good_listing_stands_in_for_a_failing_bucket_for_the_grace_then_unknown() -> None:
    lister = Lister()
    cache = OffsiteCache(lister, refresh_s=0.0, wait_s=1.0, grace_s=0.5)
    assert cache.get().backups is not None
    lister.answer = Offsite(None, "the bucket is away")
    time.sleep(0.05)
    cache.get()  # starts a listing that fails
    time.sleep(0.1)
    assert cache.get().backups is not None  # within the grace
    time.sleep(0.6)
    cache.get()
    time.sleep(0.1)
    late = cache.get()
    assert late.backups is None and late.error == "the bucket is away"


def test_the_bucket_is_listed_at_most_every_refresh_interval_unless_a_backup_changed_it() -> None:
    lister = Lister()
    cache = OffsiteCache(lister, refresh_s=60.0, wait_s=1.0)
    for _ in range(3):
        cache.get()
    assert lister.calls == 1
    cache.invalidate()
    cache.get()
    time.sleep(0.1)
    assert lister.calls == 2
