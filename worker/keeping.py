"""What retention keeps, as the environment says it, for the volume (`BACKUP_…`) and the bucket (`S3_…`), each on
its own: the age window, the tiers, and how long safety backups taken before a restore stay.

- `BACKUP_RETENTION_DAYS` (default 7) / `S3_RETENTION_DAYS` (default: the bucket keeps everything): the window;
  `0` turns it off. When any tier of a side is set (above 0) and its window is not, the window is off: the tiers
  and `BACKUP_KEEP_MIN` decide alone, as restic's `forget --keep-daily …` does without `--keep-within`.
- `BACKUP_KEEP_HOURLY` … `BACKUP_KEEP_YEARLY`, `S3_KEEP_HOURLY` … `S3_KEEP_YEARLY`: the tiers (0 or unset: off).
- Safety backups stay for the side's window when it is given, else `jobs.retention.SAFETY_DAYS` (7), from their
  creation; the newest one always.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from jobs.retention import SAFETY_DAYS
from jobs.tiers import TIERS, Tiers

MAX_DAYS = 36500
MAX_PERIODS = 100000


@dataclass(frozen=True)
class Keeping:
    retention_days: int | None  # the window in force: None keeps every backup, 0 is off
    tiers: Tiers
    safety_days: int


def whole_number(env: Mapping[str, str], name: str, default: int, low: int, high: int, problems: list[str]) -> int:
    """Return the whole number `name` holds (`default` when unset); a value that is not one, or out of
    [low, high], adds a problem naming the variable and the range, and gives `default`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name}={raw!r} is not a whole number; set it to a number from {low} to {high}")
        return default
    if not low <= value <= high:
        problems.append(f"{name}={value} is out of range; set it to a number from {low} to {high}")
        return default
    return value


_TIER_VARIABLES = {
    "BACKUP": ("BACKUP_KEEP_HOURLY", "BACKUP_KEEP_DAILY", "BACKUP_KEEP_WEEKLY", "BACKUP_KEEP_MONTHLY", "BACKUP_KEEP_YEARLY"),
    "S3": ("S3_KEEP_HOURLY", "S3_KEEP_DAILY", "S3_KEEP_WEEKLY", "S3_KEEP_MONTHLY", "S3_KEEP_YEARLY"),
}


def tier_variables(side: str) -> tuple[str, ...]:
    """Return the tier variables of a side (`BACKUP` or `S3`), in the order of `jobs.tiers.TIERS`."""
    return _TIER_VARIABLES[side]


def keeping(env: Mapping[str, str], side: str, default_days: int | None, problems: list[str]) -> Keeping:
    """Return what one side keeps (see the module docstring); problems are added to `problems`."""
    counts = {tier: whole_number(env, name, 0, 0, MAX_PERIODS, problems)
              for tier, name in zip(TIERS, tier_variables(side))}
    tiers = Tiers(**counts)
    variable = f"{side}_RETENTION_DAYS"
    given = bool(env.get(variable, "").strip())
    days = whole_number(env, variable, 0, 0, MAX_DAYS, problems) if given else None
    if days is None:
        window = 0 if tiers else default_days
    else:
        window = days
    return Keeping(retention_days=window, tiers=tiers, safety_days=days if days is not None else SAFETY_DAYS)


def bucket_keeping_without_bucket(env: Mapping[str, str]) -> list[str]:
    """Return the bucket retention variables set (S3_RETENTION_DAYS, S3_KEEP_…), to refuse them without S3_BUCKET."""
    tiers = [name for name in tier_variables("S3") if env.get(name, "").strip() not in ("", "0")]
    return ["S3_RETENTION_DAYS", *tiers] if env.get("S3_RETENTION_DAYS", "").strip() else tiers
