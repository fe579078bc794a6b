"""Configuration from the environment, validated once at start.

Every problem is gathered and reported at once (`ConfigError.problems`), each naming its variable and how to fix
it. Nothing here reads a database or touches the network.
"""

from dataclasses import astuple, dataclass, field
from datetime import timedelta
import os
from pathlib import Path
import re
from typing import Mapping
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger

from jobs import encryption, engines
from jobs.artifacts import is_set_name
from jobs.cleanup import CleanupRule, parse_rules, dangerous_rule_reason
from jobs.destinations.s3_endpoint import ENDPOINT_VARIABLES, configured_endpoint, endpoint_problem
from jobs.encryption import IDENTITY_FILE_VARIABLE, IDENTITY_VARIABLE, RECIPIENTS_VARIABLE, Identity, Recipient
from jobs.durations import format_duration, parse_duration
from jobs.purge import Rule, parse_retention_rules
from jobs.redact import MASK, mask_endpoint, mask_key, mask_url, secrets_of
from jobs.volume import MinFree, dir_problem, parse_min_free
from worker.variables import default as default_of
from worker.catalog import catalog_problem
from worker.crontab import cron_trigger
from worker.drill_config import drill_settings
from worker.keeping import Keeping, bucket_keeping_without_bucket, keeping, tier_variables, whole_number
from worker.sources import SOURCE_PREFIX, ConfiguredSet, configured_sources

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")
NOTIFY_ON = ("failure", "all")
RESTORE_ON_START = ("never", "if-missing")


class ConfigError(Exception):
    """One or more variables are invalid; `problems` holds one sentence each, `secrets` what the environment holds
    that must not be shown (for scrubbing the problems where they are printed)."""

    def __init__(self, problems: list[str], secrets: list[str] | None = None) -> None:
        self.problems = problems
        self.secrets = secrets or []
        super().__init__("; ".join(problems))


# The variables that hold secrets: URLs with passwords, webhook and ping URLs (their path), plain keys.
_URL_VARIABLES = ("BACKUP_SOURCE", "DATABASE_URL", "CATALOG_URL", "DRILL_TARGET_URL", *ENDPOINT_VARIABLES)
_ENDPOINT_VARIABLES = ("NOTIFY_WEBHOOK_URL", "HEALTHCHECK_PING_URL")
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class S3Settings:
    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    keeping: Keeping  # S3_RETENTION_DAYS and S3_KEEP_…: what retention keeps in the bucket


@dataclass(frozen=True)
class Config:
    source_url: str | None = field(repr=False)  # the main source (BACKUP_SOURCE or DATABASE_URL); a secret
    backup_dir: Path
    schedule: str
    timezone: ZoneInfo
    keeping: Keeping  # BACKUP_RETENTION_DAYS and BACKUP_KEEP_…: what retention keeps on the volume
    keep_min: int
    compression_level: int
    s3: S3Settings | None
    cleanup_rules: tuple[CleanupRule, ...]
    cleanup_schedule: str
    freshness_limit: timedelta
    catalog_url: str
    log_level: str
    log_format: str
    backup_name: str | None  # BACKUP_NAME: the backup set's name; None means the source's own name
    min_free: MinFree  # BACKUP_MIN_FREE
    protected_paths: tuple[Path, ...]  # backup directory, app directory, home: what cleanup must never sweep
    protected_files: tuple[Path, ...]  # the database's own files, when it lives in files
    aws_access_key_id: str | None = field(repr=False)
    aws_secrets: tuple[str, ...] = field(repr=False)  # AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN: for scrubbing only
    backup_trigger: BaseTrigger = field(compare=False, repr=False)
    cleanup_trigger: BaseTrigger = field(compare=False, repr=False)
    # Knowing what happened (issue 11): webhook and ping URLs carry tokens, so they are secrets.
    notify_webhook_url: str | None = field(default=None, repr=False)
    notify_on: str = default_of("NOTIFY_ON")
    healthcheck_ping_url: str | None = field(default=None, repr=False)
    health_port: int | None = None
    disk_warn_percent: int = default_of("DISK_WARN_PERCENT")
    # Every source, the main one (BACKUP_SOURCE or DATABASE_URL) first, then BACKUP_SOURCE_<NAME> by name, each
    # opened once; `source_url` stays the main one's URL.
    sources: tuple[ConfiguredSet, ...] = field(default=(), repr=False)
    retention_rules: tuple[Rule, ...] = ()  # RETENTION_RULES (issue 12): rows deleted after a good backup
    # RESTORE_ON_START: `if-missing` restores lost databases before `run` starts
    restore_on_start: str = default_of("RESTORE_ON_START")
    # BACKUP_ALLOW_EMPTY (issue 18): an empty source may follow backups that hold data
    allow_empty: bool = default_of("BACKUP_ALLOW_EMPTY")
    # Encryption (issue 20): the public keys backups are encrypted to, and the identities that decrypt (secrets)
    encryption_recipients: tuple[Recipient, ...] = ()
    encryption_identities: tuple[Identity, ...] = field(default=(), repr=False)
    encryption_identity_file: Path | None = None  # BACKUP_ENCRYPTION_IDENTITY_FILE: its path is no secret
    # Restore drills (issue 22): DRILL_SCHEDULE (None: off) and DRILL_TARGET_URL (a secret)
    drill_schedule: str | None = None
    drill_trigger: BaseTrigger | None = field(default=None, compare=False, repr=False)
    drill_target_url: str | None = field(default=None, repr=False)

    def cleanup_guard(self, rule: CleanupRule) -> str | None:
        """Return why `rule` must not run now (see `dangerous_rule_reason`), or None."""
        return dangerous_rule_reason(rule, list(self.protected_paths), self.protected_files)

    def secrets(self) -> list[str]:
        """Return every secret value the configuration holds, so that logs can scrub them."""
        return secrets_of(urls=(self.source_url, self.catalog_url, self.s3.endpoint_url if self.s3 else None,
                                *(spec.url for spec in self.sources), self.drill_target_url),
                          endpoints=(self.notify_webhook_url, self.healthcheck_ping_url),
                          values=(*self.aws_secrets, *(text for each in self.encryption_identities for text in each.secrets)))

    def describe(self) -> dict[str, object]:
        """Return the configuration as printable values, with every secret masked."""
        return {
            "BACKUP_SOURCE": mask_url(self.source_url) if self.source_url else None,
            **{spec.variable: mask_url(spec.url) for spec in self.sources if not spec.main},
            "BACKUP_NAME": self.backup_name,
            "BACKUP_SETS": [spec.name for spec in self.sources],
            "BACKUP_DIR": str(self.backup_dir),
            "BACKUP_MIN_FREE": self.min_free.text,
            "BACKUP_SCHEDULE": self.schedule,
            "BACKUP_TIMEZONE": str(self.timezone.key),
            "BACKUP_RETENTION_DAYS": self.keeping.retention_days,
            "BACKUP_KEEP_MIN": self.keep_min,
            **{name: count or None for name, count in zip(tier_variables("BACKUP"), astuple(self.keeping.tiers))},
            "BACKUP_COMPRESSION_LEVEL": self.compression_level,
            "S3_BUCKET": self.s3.bucket if self.s3 else None,
            "S3_PREFIX": self.s3.prefix if self.s3 else None,
            "S3_ENDPOINT_URL": mask_url(self.s3.endpoint_url) if self.s3 and self.s3.endpoint_url else None,
            "S3_REGION": self.s3.region if self.s3 else None,
            "S3_RETENTION_DAYS": self.s3.keeping.retention_days if self.s3 else None,
            **{name: (count or None) if self.s3 else None
               for name, count in zip(tier_variables("S3"), astuple(self.s3.keeping.tiers) if self.s3 else [0] * 5)},
            "AWS_ACCESS_KEY_ID": mask_key(self.aws_access_key_id),
            "AWS_SECRET_ACCESS_KEY": MASK if self.aws_secrets else None,
            "CLEANUP_RULES": [rule.describe() for rule in self.cleanup_rules],
            "CLEANUP_SCHEDULE": self.cleanup_schedule,
            "FRESHNESS_LIMIT": format_duration(self.freshness_limit),
            "CATALOG_URL": mask_url(self.catalog_url),
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": self.log_format,
            "NOTIFY_WEBHOOK_URL": mask_endpoint(self.notify_webhook_url),
            "NOTIFY_ON": self.notify_on,
            "HEALTHCHECK_PING_URL": mask_endpoint(self.healthcheck_ping_url),
            "HEALTH_PORT": self.health_port,
            "DISK_WARN_PERCENT": self.disk_warn_percent,
            "RETENTION_RULES": [rule.describe() for rule in self.retention_rules],
            "RESTORE_ON_START": self.restore_on_start,
            "BACKUP_ALLOW_EMPTY": self.allow_empty,
            RECIPIENTS_VARIABLE: [recipient.fingerprint for recipient in self.encryption_recipients],
            IDENTITY_VARIABLE: MASK if self.encryption_identities and not self.encryption_identity_file else None,
            IDENTITY_FILE_VARIABLE: str(self.encryption_identity_file) if self.encryption_identity_file else None,
            "DRILL_SCHEDULE": self.drill_schedule,
            "DRILL_TARGET_URL": mask_url(self.drill_target_url) if self.drill_target_url else None,
        }


def _environment_secrets(env: Mapping[str, str]) -> list[str]:
    """Return the secrets of the variables as given, for a configuration that could not be loaded."""
    urls = [value for name, value in env.items() if name in _URL_VARIABLES or name.startswith(SOURCE_PREFIX)]
    values = [env.get(name, "") for name in _SECRET_VARIABLES] + encryption.identity_secrets(env.get(IDENTITY_VARIABLE, ""))
    return secrets_of(urls, [env.get(name) for name in _ENDPOINT_VARIABLES], values)


_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _hostname(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _flag(env: Mapping[str, str], name: str, problems: list[str]) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "true", "false"):
        problems.append(f"{name}={raw!r} is not true or false; set it to true or false (false when unset)")
    return raw == "true"


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], problems: list[str]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        problems.append(f"{name}={value!r} is not one of {', '.join(choices)}")
        return default
    return value


def load_config(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Config:
    """Given the environment, return the validated Config. Raise ConfigError listing every invalid variable."""
    env = os.environ if env is None else env
    cwd = cwd or Path.cwd()
    problems: list[str] = []

    volume = env.get("RAILWAY_VOLUME_MOUNT_PATH", "").strip()
    default_dir = Path(volume) / "backups" if volume else cwd / "data" / "backups"
    backup_dir = Path(env.get("BACKUP_DIR", "").strip() or default_dir)
    if not backup_dir.is_absolute():
        backup_dir = cwd / backup_dir
    problem = dir_problem(backup_dir)
    if problem:
        problems.append(problem)

    backup_name = env.get("BACKUP_NAME", "").strip() or None
    if backup_name is not None and not is_set_name(backup_name):
        problems.append(f"BACKUP_NAME={backup_name!r} is not a backup set name; use letters, digits, _ and - only (at most 100)")
    source_url, configured = configured_sources(env, cwd, backup_name, problems)
    try:
        min_free = parse_min_free(env.get("BACKUP_MIN_FREE", "").strip() or default_of("BACKUP_MIN_FREE"))
    except ValueError as error:
        problems.append(f"BACKUP_MIN_FREE: {error}")
        min_free = parse_min_free(default_of("BACKUP_MIN_FREE"))

    tz_name = (env.get("BACKUP_TIMEZONE") or env.get("TZ") or "UTC").strip().lstrip(":")
    try:
        timezone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"BACKUP_TIMEZONE={tz_name!r} is not a known time zone; use a name like UTC or Europe/Berlin")
        timezone = ZoneInfo("UTC")

    schedule = env.get("BACKUP_SCHEDULE", "").strip() or default_of("BACKUP_SCHEDULE")
    cleanup_schedule = env.get("CLEANUP_SCHEDULE", "").strip() or default_of("CLEANUP_SCHEDULE")
    triggers: dict[str, BaseTrigger] = {}
    for name, expression in (("BACKUP_SCHEDULE", schedule), ("CLEANUP_SCHEDULE", cleanup_schedule)):
        try:
            triggers[name] = cron_trigger(expression, timezone)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            triggers[name] = cron_trigger("0 2 * * *", timezone)

    local_keeping = keeping(env, "BACKUP", default_of("BACKUP_RETENTION_DAYS"), problems)
    keep_min = whole_number(env, "BACKUP_KEEP_MIN", default_of("BACKUP_KEEP_MIN"), 1, 10000, problems)
    # 20-22 are zstd's "ultra" levels: windows up to 128 MiB, hundreds of MiB of memory, and jobs too long to stop
    # within the 10 s SIGTERM promise; 19 is the highest level we accept.
    level = whole_number(env, "BACKUP_COMPRESSION_LEVEL", default_of("BACKUP_COMPRESSION_LEVEL"), 1, 19, problems)

    s3 = None
    bucket = env.get("S3_BUCKET", "").strip()
    if bucket:
        named = configured_endpoint(env)  # S3_ENDPOINT_URL, or botocore's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
        endpoint = named[1] if named else None
        if named and (problem := endpoint_problem(*named)):
            problems.append(problem)
        region = env.get("S3_REGION", "").strip() or default_of("S3_REGION")
        if not _REGION.match(region):
            problems.append(f"S3_REGION={region!r} is not a region name; use one like us-east-1, eu-central-003 or auto")
        s3 = S3Settings(
            bucket=bucket,
            prefix=env.get("S3_PREFIX", "").strip().strip("/"),
            endpoint_url=endpoint,
            region=region,
            keeping=keeping(env, "S3", None, problems),
        )
    elif bucket_keeping_without_bucket(env) or env.get("S3_PREFIX") or env.get("S3_ENDPOINT_URL"):
        named = [*bucket_keeping_without_bucket(env), *(name for name in ("S3_PREFIX", "S3_ENDPOINT_URL") if env.get(name))]
        problems.append(f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} set but S3_BUCKET is not; set "
                        "S3_BUCKET (or unset them)")

    rules: tuple[CleanupRule, ...] = ()
    try:
        rules = tuple(parse_rules(env.get("CLEANUP_RULES", ""), cwd))
    except ValueError as error:
        problems.append(f"CLEANUP_RULES: {error}")
    protected = [backup_dir, cwd, Path.home()]
    protected_files = tuple(path for each in configured for path in each.source.protected_files())
    for rule in rules:
        reason = dangerous_rule_reason(rule, protected, protected_files)
        if reason:
            problems.append(f"CLEANUP_RULES: {rule.describe()} {reason}")

    try:
        freshness = parse_duration(env.get("FRESHNESS_LIMIT", "").strip() or default_of("FRESHNESS_LIMIT"))
    except ValueError as error:
        problems.append(f"FRESHNESS_LIMIT: {error}")
        freshness = timedelta(hours=26)

    catalog_url = env.get("CATALOG_URL", "").strip() or f"sqlite:///{backup_dir / 'catalog.db'}"
    problem = catalog_problem(catalog_url)
    if problem:
        problems.append(problem)

    log_level = _choice(env, "LOG_LEVEL", default_of("LOG_LEVEL"), LOG_LEVELS, problems)
    log_format = _choice(env, "LOG_FORMAT", default_of("LOG_FORMAT"), LOG_FORMATS, problems)

    monitoring = _monitoring(env, problems)
    main_source = next((each.source for each in configured if each.main), None)  # the one RETENTION_RULES applies to
    retention_rules = _retention_rules(env, source_url, main_source, problems)
    restore_on_start = _choice(env, "RESTORE_ON_START", default_of("RESTORE_ON_START"), RESTORE_ON_START, problems)
    allow_empty = _flag(env, "BACKUP_ALLOW_EMPTY", problems)
    recipients, identities, identity_file = encryption.configured(env, cwd, problems)
    drills = drill_settings(env, timezone, configured, problems)

    if problems:
        raise ConfigError(problems, _environment_secrets(env))
    return Config(
        source_url=source_url,
        backup_dir=backup_dir,
        schedule=schedule,
        timezone=timezone,
        keeping=local_keeping,
        keep_min=keep_min,
        compression_level=level,
        s3=s3,
        cleanup_rules=rules,
        cleanup_schedule=cleanup_schedule,
        freshness_limit=freshness,
        catalog_url=catalog_url,
        log_level=log_level,
        log_format=log_format,
        backup_name=backup_name,
        min_free=min_free,
        protected_paths=tuple(protected),
        protected_files=protected_files,
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secrets=tuple(env[name] for name in _SECRET_VARIABLES if env.get(name)),
        backup_trigger=triggers["BACKUP_SCHEDULE"],
        cleanup_trigger=triggers["CLEANUP_SCHEDULE"],
        sources=configured,
        **monitoring,
        retention_rules=retention_rules,
        restore_on_start=restore_on_start,
        allow_empty=allow_empty,
        encryption_recipients=tuple(recipients),
        encryption_identities=tuple(identities),
        encryption_identity_file=identity_file,
        **drills,
    )


def _monitoring(env: Mapping[str, str], problems: list[str]) -> dict[str, object]:
    """Given the environment, return the Config fields of notifications, health and disk warnings (issue 11)."""
    urls: dict[str, str | None] = {}
    for name in ("NOTIFY_WEBHOOK_URL", "HEALTHCHECK_PING_URL"):
        url = env.get(name, "").strip() or None
        if url and (not url.lower().startswith(("http://", "https://")) or not _hostname(url)):
            problems.append(f"{name}={mask_endpoint(url)!r} must be an http(s) URL like https://hooks.example.com/…")
            url = None
        urls[name] = url
    port = None
    if env.get("HEALTH_PORT", "").strip().lower() not in ("", "off"):
        port = whole_number(env, "HEALTH_PORT", 0, 1, 65535, problems) or None
    return {
        "notify_webhook_url": urls["NOTIFY_WEBHOOK_URL"],
        "notify_on": _choice(env, "NOTIFY_ON", default_of("NOTIFY_ON"), NOTIFY_ON, problems),
        "healthcheck_ping_url": urls["HEALTHCHECK_PING_URL"],
        "health_port": port,
        "disk_warn_percent": whole_number(env, "DISK_WARN_PERCENT", default_of("DISK_WARN_PERCENT"), 1, 100, problems),
    }


def _retention_rules(env: Mapping[str, str], source_url: str | None, source: engines.Source | None,
                     problems: list[str]) -> tuple[Rule, ...]:
    """Given the environment and the main source, return RETENTION_RULES (issue 12), adding a problem for bad
    pairs, for rules without a source, and for a source that has no tables (Redis). Whether each rule fits the
    database is checked when a command starts (worker/purge.py): that needs a connection."""
    text = env.get("RETENTION_RULES", "")
    try:
        rules = tuple(parse_retention_rules(text))
    except ValueError as error:
        problems.append(f"RETENTION_RULES: {error}")
        return ()
    if rules and not source_url:
        problems.append("RETENTION_RULES is set but BACKUP_SOURCE is not; set BACKUP_SOURCE (or DATABASE_URL) to "
                        "the SQLite or PostgreSQL database whose rows it deletes")
    elif rules and source is not None and source.sql_database() is None:
        problems.append(f"RETENTION_RULES: table retention works on SQLite and PostgreSQL sources, not on "
                        f"{mask_url(source_url or '')}; unset RETENTION_RULES")
    return rules

