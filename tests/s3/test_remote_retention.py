"""Retention on the bucket: the same plan and safety rules as on the volume, applied through the destination."""

from datetime import datetime, timedelta, timezone
import json
from pathlib import Path
import threading
from typing import Any

from jobs import offsite
from jobs.artifacts import MANIFEST_SUFFIX
from jobs.backups import list_backups
from jobs.destinations.local import LocalDestination
from jobs.manifest import utc_iso
from jobs.pipeline import apply_retention
from jobs.retention import Policy


def age_backups(local: LocalDestination, days: list[float]) -> None:
    """Rewrite the local manifests' created_at, oldest backup first, to the given ages in days."""
    backups, _ = list_backups(local)
    now = datetime.now(timezone.utc)
    for backup, age in zip(reversed(backups), days):
        path = local.path(backup.manifest_key)
        manifest = json.loads(path.read_text())
        manifest["created_at"] = utc_iso(now - timedelta(days=age))
        path.write_text(json.dumps(manifest))


def test_the_bucket_is_pruned_by_age_but_keeps_the_newest_verified_backups(local_backups: Any, remote: Any) -> None:
    local, _ = local_backups
    age_backups(local, [40, 35, 2])
    offsite.sync(local, remote, threading.Event())
    plan = apply_retention(remote, Policy(30, 1))
    remaining, _ = list_backups(remote)
    assert len(plan.delete) == 2 and len(remaining) == 1
    assert remaining[0].created_at > datetime.now(timezone.utc) - timedelta(days=3)
    assert not [e.key for e in remote.list() if e.key.endswith(MANIFEST_SUFFIX) and e.key.removesuffix(MANIFEST_SUFFIX) not in
                {b.artifact for b in remaining}]


def test_the_bucket_keeps_its_last_backup_however_old(local_backups: Any, remote: Any) -> None:
    local, _ = local_backups
    age_backups(local, [400, 300, 200])
    offsite.sync(local, remote, threading.Event())
    apply_retention(remote, Policy(30, 1))
    (survivor,), _ = list_backups(remote)
    assert (datetime.now(timezone.utc) - survivor.created_at).days == 200


def test_backups_the_bucket_would_prune_at_once_are_not_uploaded_again_every_cycle(local_backups: Any, remote: Any) -> None:
    local, _ = local_backups
    age_backups(local, [10, 9, 0.5])
    policy = Policy(2, 1)
    first = offsite.sync(local, remote, threading.Event(), policy)
    apply_retention(remote, policy)
    second = offsite.sync(local, remote, threading.Event(), policy)
    assert len(first) == 1 and second == []
    assert len(list_backups(remote)[0]) == 1
