"""What `status` says about retention: each side's policy in one line, how many backups each of its rules holds
now, and how many the next retention run would delete (the plan of `jobs.retention`, made without reading any
artifact: a damaged backup found by the run's SHA-256 re-check may change it)."""

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from jobs import retention
from jobs.backups import Backup
from worker.config import Config
from worker.context import policy_of

RULES = ("newest", "within", "hourly", "daily", "weekly", "monthly", "yearly")


def side(policy: retention.Policy, backups: Sequence[Backup] | None, now: datetime) -> dict[str, Any]:
    """Return one side's part: {"policy", "holds": {rule: backups}, "would_delete"}; `backups` None (the bucket could
    not be listed) gives the policy alone."""
    found: dict[str, Any] = {"policy": policy.describe(), "holds": None, "would_delete": None}
    if backups is None:
        return found
    result = retention.plan(backups, policy, now)
    found["holds"] = {rule: result.tiers[rule] for rule in RULES if rule in result.tiers}
    found["would_delete"] = len(result.delete)
    return found


def report(config: Config, local: Sequence[Backup], offsite: Sequence[Backup] | None, now: datetime) -> dict[str, Any]:
    """Return `status`'s `retention`: the volume's side, and the bucket's when S3_BUCKET is set."""
    sides = {"local": side(policy_of(config.keeping, config), local, now)}
    if config.s3 is not None:
        sides["s3"] = side(policy_of(config.s3.keeping, config), offsite, now)
    return sides


def lines(sides: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Return `status`'s lines about retention, one per side."""
    found = []
    for name, state in sides.items():
        where = "volume" if name == "local" else "bucket"
        holds = state.get("holds")
        if holds is None:
            now = "unknown (the bucket could not be listed)"
        else:
            now = ", ".join(f"{rule} {count}" for rule, count in holds.items()) or "nothing yet"
            if state.get("would_delete"):
                now += f"; the next run deletes {state['would_delete']}"
        found.append(f"retention ({where}): {state['policy']}; holds {now}")
    return found
