"""Every environment variable the worker reads, declared once: name, default, one-line meaning, section.

`worker/config.py` takes its literal defaults from here (`default(NAME)`), and the variables table of
`docs/reference.md` is rendered from here, so the documented defaults cannot drift from the code:

    python -m worker.variables                           # print the table
    python -m worker.variables --write docs/reference.md # replace it between the markers

`tests/unit/test_variables.py` checks that the table in the reference is this one, that every variable the code
reads is declared here (and every declared one is read), and that the configuration's defaults are these.
"""

from dataclasses import dataclass
from pathlib import Path
import sys

BEGIN = "<!-- variables: generated from worker/variables.py; edit there -->"
END = "<!-- /variables -->"


@dataclass(frozen=True)
class Variable:
    """One variable: `value` is the literal default the worker uses when it is unset (None: none, or computed),
    `shown` the default as the reference shows it (when it is not simply `value`)."""

    name: str
    description: str
    section: str
    value: str | int | bool | None = None
    shown: str | None = None

    def default_text(self) -> str:
        """Return the default as a user reads it in the table."""
        if self.shown is not None:
            return self.shown
        if self.value is None:
            return "none"
        return f"`{str(self.value).lower() if isinstance(self.value, bool) else self.value}`"


SOURCES = "What to back up"
SCHEDULE = "Schedule, retention, compression"
S3 = "Off-site copies (S3)"
ENCRYPTION = "Encryption (age)"
CLEANUP = "Cleanup and table retention"
MONITORING = "Monitoring"
PROCESS = "Logs, catalog, the platform"
SECTIONS = (SOURCES, SCHEDULE, S3, ENCRYPTION, CLEANUP, MONITORING, PROCESS)

VARIABLES: tuple[Variable, ...] = (
    Variable("BACKUP_SOURCE",
             "What to back up. `sqlite:///relative/path.db` (relative to the working directory), "
             "`sqlite:////absolute/path.db`, `postgresql://USER:PASSWORD@HOST:PORT/DB` / `postgres://…` (query "
             "parameters such as `sslmode` honoured; the SQLAlchemy forms `postgresql+psycopg://`, `+psycopg2`, "
             "`+asyncpg`, `sqlite+aiosqlite://`, `sqlite+pysqlite://` work too, the driver part ignored), "
             "`redis://[USER:PASSWORD@]HOST[:PORT]` / `rediss://…` (TLS; see [Engines](#engines)). A user or "
             "password with `@` or `/` must be percent-encoded (`%40`, `%2F`): unencoded, it is a configuration "
             "error (exit 2) that shows none of it.",
             SOURCES, shown="`DATABASE_URL` if set, else none"),
    Variable("DATABASE_URL",
             "Used when `BACKUP_SOURCE` is not set (so a Railway reference like `${{Postgres.DATABASE_URL}}` works "
             "as is).",
             SOURCES),
    Variable("BACKUP_SOURCE_<NAME>",
             "Further sources for the same worker, e.g. `BACKUP_SOURCE_CACHE=redis://…` (a Railway reference "
             "`${{Redis.REDIS_URL}}` works); each is the backup set `<name>` in lower case, with its own retention, "
             "freshness and catch-up. Set names must be unique across all sources (exit 2 naming both variables); an"
             " empty one is an error. `config` prints each masked, and `BACKUP_SETS`.",
             SOURCES),
    Variable("BACKUP_NAME",
             "The backup set's name of `BACKUP_SOURCE` (the `<name>` of artifact names): letters, digits, `_` and "
             "`-`, at most 100.",
             SOURCES, shown="from the source: SQLite file name without extension, PostgreSQL database name, `redis`"),
    Variable("BACKUP_ALLOW_EMPTY",
             "`true` or `false`. A backup of a source with no rows (no user tables, or all empty; Redis: no keys) "
             "fails at stage `preflight` while the set's newest backup that `restore --latest` would take holds "
             "data, naming it and the command that restores it; `true` takes it, flagged `empty_allowed`. A bucket "
             "that cannot be listed counts as holding data: an empty source is refused then too.",
             SOURCES, value=False),
    Variable("RESTORE_ON_START",
             "`if-missing`: at `run` start, before the `RETENTION_RULES` check, before `--exec` starts the app and "
             "before the catch-up backup, restore each SQLite set whose file is missing or empty (0 bytes, links "
             "followed) and each PostgreSQL set whose database has no user tables (and either whose database has "
             "tables but no row in any while the set's newest backup of this source records rows: restored over it, "
             "SQLite with its safety copy, PostgreSQL with `pg_restore --clean`) from the newest intact backup of "
             "the set across the volume and the bucket (the volume's copy first); damaged backups are passed over. "
             "Another source's backup only when that source looks gone (its newest backup is older than "
             "`FRESHNESS_LIMIT`); a live one's: exit 1, naming both "
             "([safety.md](safety.md#whose-backup-is-this-jobsidentitypy)). No backup anywhere: start normally. Backups but none restorable (or `-wal`/`-shm`/`-journal` beside a "
             "missing file): exit 1, the app never starts. A PostgreSQL server that does not answer is asked again "
             "for 60 s. Redis sets are skipped. See [recovery.md](recovery.md).",
             SOURCES, value="never"),
    Variable("PG_BIN_DIR",
             "A directory holding `pg_dump`/`pg_restore` to use instead of the automatic choice (only that directory"
             " is looked at; see [postgres.md](postgres.md)).",
             SOURCES),
    Variable("PGOPTIONS",
             "libpq session options for `pg_dump`/`pg_restore` when the source URL has no `options` parameter; the "
             "worker adds its own settings after them.",
             SOURCES),
    Variable("BACKUP_DIR",
             "Local backups, manifests, the lock and the catalog. Created with mode 0700.",
             SCHEDULE, shown="`$RAILWAY_VOLUME_MOUNT_PATH/backups`, else `./data/backups`"),
    Variable("BACKUP_SCHEDULE",
             "When `run` takes a backup: a standard 5-field crontab line ([Formats](#formats)).",
             SCHEDULE, value="0 2 * * *"),
    Variable("BACKUP_TIMEZONE",
             "IANA time zone the schedules are read in, e.g. `Europe/Berlin`.",
             SCHEDULE, shown="`TZ`, else `UTC`"),
    Variable("TZ",
             "The system time zone; the schedules' time zone when `BACKUP_TIMEZONE` is not set.",
             SCHEDULE),
    Variable("BACKUP_RETENTION_DAYS",
             "Keep every local backup made within this many days of the newest sound backup of the set (0 to 36500;"
             " `0` turns the window off). Within a cycle, counted from the newest one before the backup just written."
             " Unset while a `BACKUP_KEEP_*` tier is set: off. Also how long safety backups taken before a restore"
             " are kept (7 days when unset; the newest one always).",
             SCHEDULE, value=7, shown="`7`; off when a tier is set"),
    Variable("BACKUP_KEEP_MIN",
             "Keep the newest N sound backups (a passed check, an artifact that matches its manifest, not dated "
             "in the future) however old (1 to 10000); before anything is deleted, the SHA-256 of every backup a "
             "deletion relies on (these, and the tier holders) is re-checked.",
             SCHEDULE, value=3),
    Variable("BACKUP_KEEP_HOURLY",
             "Keep the newest sound backup of each of the last N hours that hold one (0 to 100000; the tiers are restic's `forget --keep-*`, read on `BACKUP_TIMEZONE`'s clock; see [retention.md](retention.md)).",
             SCHEDULE, shown="none"),
    Variable("BACKUP_KEEP_DAILY",
             "… of each of the last N days that hold one.",
             SCHEDULE, shown="none"),
    Variable("BACKUP_KEEP_WEEKLY",
             "… of each of the last N ISO weeks (Monday to Sunday) that hold one.",
             SCHEDULE, shown="none"),
    Variable("BACKUP_KEEP_MONTHLY",
             "… of each of the last N calendar months that hold one.",
             SCHEDULE, shown="none"),
    Variable("BACKUP_KEEP_YEARLY",
             "… of each of the last N years that hold one.",
             SCHEDULE, shown="none"),
    Variable("BACKUP_COMPRESSION_LEVEL",
             "zstd level, 1 to 19 (zstd's \"ultra\" levels 20-22 are refused: windows up to 128 MiB, too much memory "
             "and too slow to stop within 10 s).",
             SCHEDULE, value=3),
    Variable("BACKUP_MIN_FREE",
             "Refuse a backup that would leave less free space than this on the backup volume (percent of the "
             "volume, or a size like `2GB`, `500MB`, `1GiB`; `0` turns it off): the app's own writes come first.",
             SCHEDULE, value="10%"),
    Variable("S3_BUCKET",
             "Upload every backup to this bucket ([s3.md](s3.md)).",
             S3, shown="none: no off-site copies"),
    Variable("S3_PREFIX",
             "Key prefix inside the bucket (`myapp` → `myapp/<artifact>`).",
             S3),
    Variable("S3_ENDPOINT_URL",
             "An S3-compatible endpoint (Cloudflare R2, Backblaze B2, MinIO, Ceph, SeaweedFS), `https://host[:port]`; "
             "path-style addressing, checksum headers only where an operation requires them. The endpoint is the "
             "server only: a path (`http://host:8333/bucket`) is a configuration error (exit 2); the bucket goes in "
             "`S3_BUCKET`, a key prefix in `S3_PREFIX`.",
             S3, shown="AWS"),
    Variable("AWS_ENDPOINT_URL_S3",
             "botocore's own endpoint variable, read after `S3_ENDPOINT_URL` and treated the same way (an "
             "S3-compatible endpoint, no path).",
             S3, shown="none"),
    Variable("AWS_ENDPOINT_URL",
             "botocore's endpoint for every AWS service, read after `AWS_ENDPOINT_URL_S3` and treated the same way.",
             S3, shown="none"),
    Variable("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
             "`true`: the two `AWS_ENDPOINT_URL…` variables are ignored, as botocore ignores them.",
             S3, shown="false"),
    Variable("S3_REGION",
             "The bucket's region (`auto` for R2).",
             S3, value="us-east-1"),
    Variable("S3_RETENTION_DAYS",
             "Apply retention to the bucket too, planned on its own: keep what is within this many days of the "
             "bucket's newest sound backup (0 to 36500; `0` turns the window off; unset while an `S3_KEEP_*` tier is "
             "set: off). `BACKUP_KEEP_MIN` applies.",
             S3, shown="none: the bucket keeps everything (unless an `S3_KEEP_*` tier is set)"),
    Variable("S3_KEEP_HOURLY",
             "`BACKUP_KEEP_HOURLY` for the bucket, planned on its own (0 to 100000).",
             S3, shown="none"),
    Variable("S3_KEEP_DAILY",
             "`BACKUP_KEEP_DAILY` for the bucket.",
             S3, shown="none"),
    Variable("S3_KEEP_WEEKLY",
             "`BACKUP_KEEP_WEEKLY` for the bucket.",
             S3, shown="none"),
    Variable("S3_KEEP_MONTHLY",
             "`BACKUP_KEEP_MONTHLY` for the bucket.",
             S3, shown="none"),
    Variable("S3_KEEP_YEARLY",
             "`BACKUP_KEEP_YEARLY` for the bucket.",
             S3, shown="none"),
    Variable("AWS_ACCESS_KEY_ID",
             "S3 access key id (shown as its first 4 characters by `config`).",
             S3, shown="the standard AWS credential chain"),
    Variable("AWS_SECRET_ACCESS_KEY",
             "S3 secret key; never logged or printed.",
             S3, shown="the standard AWS credential chain"),
    Variable("AWS_SESSION_TOKEN",
             "S3 session token for temporary credentials; never logged or printed.",
             S3, shown="the standard AWS credential chain"),
    Variable("BACKUP_ENCRYPTION_RECIPIENTS",
             "Public keys to encrypt backups to: `age1…` (from `keygen`), `ssh-ed25519 AAAA…` or "
             "`ssh-rsa AAAA…`, separated by commas or newlines. With it, every new artifact is compressed then "
             "encrypted in the same pass (`<name>-<stamp>.<kind>.zst.age`), locally and in the bucket; no "
             "unencrypted backup is uploaded any more. An invalid one is a configuration error (exit 2). `config` "
             "shows each one's fingerprint, which the manifest's `encryption` field records "
             "([encryption.md](encryption.md)).",
             ENCRYPTION),
    Variable("BACKUP_ENCRYPTION_IDENTITY",
             "A secret key that decrypts (`AGE-SECRET-KEY-1…`, one per line; or an unencrypted SSH private key). "
             "Masked by `config`, never logged, removed from every child's environment (the app of `run --exec` "
             "included). Not with `BACKUP_ENCRYPTION_IDENTITY_FILE`.",
             ENCRYPTION),
    Variable("BACKUP_ENCRYPTION_IDENTITY_FILE",
             "The path of an age identity file (one or more `AGE-SECRET-KEY-1…` lines, `#` comments) or of an "
             "unencrypted ed25519 or RSA SSH private key; read at start. Removed from every child's environment.",
             ENCRYPTION),
    Variable("CLEANUP_RULES",
             "Files to delete by age: `GLOB=AGE` pairs separated by `;` or newlines ([Formats](#formats)). Rules "
             "that could sweep `/`, a system directory, the home or working directory, `BACKUP_DIR` or the database "
             "files are refused at start.",
             CLEANUP),
    Variable("CLEANUP_SCHEDULE",
             "When `run` applies the cleanup rules.",
             CLEANUP, value="0 * * * *"),
    Variable("RETENTION_RULES",
             "Rows to delete from the source database (SQLite or PostgreSQL, the main source only) right after each "
             "fully successful backup cycle: `TABLE.COLUMN=AGE` or `SCHEMA.TABLE.COLUMN=AGE` pairs separated by `;` "
             "or newlines, e.g. `events.created_at=30d;sessions.start_time=365d` ([Formats](#formats)); a Unix "
             "time column in milliseconds or microseconds says its unit, `events.at:ms=30d`; orphans "
             "`spec_runs.session_id->sessions.id`; LangGraph threads `langgraph=90d`. Needs "
             "`BACKUP_SOURCE`; refused for Redis. See [table-retention.md](table-retention.md).",
             CLEANUP),
    Variable("FRESHNESS_LIMIT",
             "`status` reports stale (exit 1) when the newest sound backup is older than this; with `S3_BUCKET`, the"
             " newest one that is also in the bucket.",
             MONITORING, value="26h"),
    Variable("NOTIFY_WEBHOOK_URL",
             "POST one JSON object per notified outcome (Slack/Discord-compatible `text`; "
             "[monitoring.md](monitoring.md)).",
             MONITORING),
    Variable("NOTIFY_ON",
             "`failure` or `all`.",
             MONITORING, value="failure"),
    Variable("HEALTHCHECK_PING_URL",
             "healthchecks.io-style dead-man's switch: `URL/start`, `URL`, `URL/fail`.",
             MONITORING),
    Variable("HEALTH_PORT",
             "`run` serves `GET /healthz` and `GET /metrics` on this port.",
             MONITORING, shown="off"),
    Variable("DISK_WARN_PERCENT",
             "Warn when the backup volume is fuller than this.",
             MONITORING, value=80),
    Variable("DRILL_SCHEDULE",
             "When `run` drills: restores the newest sound backup of every set from the bucket (the volume without "
             "`S3_BUCKET`) into a scratch target and compares it with what the backup recorded "
             "([drills.md](drills.md)). A cron expression, like `0 4 * * 0` (weekly).",
             MONITORING, shown="off"),
    Variable("DRILL_TARGET_URL",
             "The empty PostgreSQL database drills restore into (emptied again afterwards), for a role that may not "
             "create databases; else a scratch database `<db>_drill_<stamp>` on the source's server, dropped "
             "afterwards. It must hold nothing at all and must not be a source database (the same URL as a source "
             "is refused at start). A secret.",
             MONITORING, shown="a scratch database on the source's server"),
    Variable("LOG_LEVEL",
             "`debug`, `info`, `warning`, `error`. `debug` also shows tracebacks.",
             PROCESS, value="info"),
    Variable("LOG_FORMAT",
             "`json` (one object per line) or `console` (human-readable lines).",
             PROCESS, value="json"),
    Variable("CATALOG_URL",
             "SQLAlchemy URL of the run history; any PostgreSQL URL (`postgresql://`, `postgres://`, any `+driver`) "
             "opens through psycopg 3 and any SQLite one through sqlite3, the `runs` table is created if missing. A "
             "catalog that cannot be opened only warns (password masked).",
             PROCESS, shown="`sqlite:///$BACKUP_DIR/catalog.db`"),
    Variable("RAILWAY_VOLUME_MOUNT_PATH",
             "Where the service's volume is mounted; only used for the `BACKUP_DIR` default.",
             PROCESS, shown="set by Railway"),
    Variable("RAILWAY_SERVICE_ID",
             "Recorded in a SQLite backup's manifest (`source.railway_service_id`): part of whose backup it is "
             "([safety.md](safety.md#whose-backup-is-this-jobsidentitypy)).",
             PROCESS, shown="set by Railway"),
    Variable("RAILWAY_ENVIRONMENT_ID",
             "Recorded in every backup's manifest (`source.railway_environment_id`): part of whose backup it is.",
             PROCESS, shown="set by Railway"),
)

_BY_NAME = {variable.name: variable for variable in VARIABLES}


def default(name: str) -> str | int | bool:
    """Given a declared variable's name, return the literal default the worker uses when it is unset. Raise
    KeyError for an undeclared name or one without a literal default (a programming error)."""
    value = _BY_NAME[name].value
    if value is None:
        raise KeyError(f"{name} has no literal default in worker/variables.py")
    return value


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """Return the variables table as markdown: one table per section, in declaration order."""
    parts: list[str] = []
    for section in SECTIONS:
        parts += [f"**{section}**", "", "| variable | default | meaning |", "|---|---|---|"]
        parts += [f"| `{variable.name}` | {_cell(variable.default_text())} | {_cell(variable.description)} |"
                  for variable in VARIABLES if variable.section == section]
        parts.append("")
    return "\n".join(parts).rstrip("\n") + "\n"


def replace_between_markers(text: str, table: str) -> str:
    """Given a document holding the BEGIN and END markers, return it with the table between them replaced."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {BEGIN} … {END} markers")
    return text[:start + len(BEGIN)] + "\n" + table + text[end:]


def main(argv: list[str]) -> int:
    if not argv:
        sys.stdout.write(render())
        return 0
    if len(argv) == 2 and argv[0] == "--write":
        path = Path(argv[1])
        path.write_text(replace_between_markers(path.read_text(), render()))
        return 0
    sys.stderr.write("usage: python -m worker.variables [--write docs/reference.md]\n")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
