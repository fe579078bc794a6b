"""What every verb shares: the configuration, the catalog, the destinations, the retention policies and the
configured backup sets."""

from dataclasses import dataclass, field
from pathlib import Path
import threading

from jobs import pipeline, retention
from jobs.artifacts import BackupSet, parse_id
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.engines import Source
from worker import __version__
from worker.catalog import Catalog, open_catalog
from worker.config import Config
from worker.keeping import Keeping
from worker.lock import for_deletion

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

NO_SOURCE = ("BACKUP_SOURCE is not set; set it (or DATABASE_URL, or BACKUP_SOURCE_<NAME>) to the database to back up, "
             "like sqlite:////app/data/app.db")


def not_an_id(ident: str) -> str:
    """Return the sentence for a backup id that is not named as backups are."""
    return f"{ident!r} is not a backup id like app-20261122T020000Z.sqlite; run `python -m worker list` to see them"


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
            self._catalog = open_catalog(self.config.catalog_url, self.config.secrets())
        return self._catalog

    @property
    def local(self) -> LocalDestination:
        return LocalDestination(self.config.backup_dir)

    def sources(self, only: list[str] | None = None) -> list[Source]:
        """Return every configured source (the main one first), each named by its backup set, as the
        configuration opened it; with `only`, just those sets. Raise UsageError when no source is configured."""
        if not self.config.sources:
            raise UsageError(NO_SOURCE)
        return [each.source for each in self.config.sources if only is None or each.name in only]

    def source(self, name: str | None = None) -> Source:
        """Return the configured source of the set `name`, or without a name the main one (the first).
        Raise UsageError when there is no such source."""
        if name is None:
            return self.sources()[0]
        chosen = self.sources([name])
        if not chosen:
            raise UsageError(f"there is no configured source {name!r} (configured: {self.set_names()}); check --source")
        return chosen[0]

    def set_names(self) -> str:
        """Return the configured backup sets for a message: `app (sqlite), cache (rdb)`, or `none`."""
        return ", ".join(map(str, self.backup_sets())) or "none"

    def restore_source(self, source_name: str | None, ident: str | None) -> Source:
        """Return the live source a restore without --to writes into: the set of --source, else of the backup id,
        else the only configured source. Raise UsageError, before anything is fetched, when that is ambiguous, not
        configured, or a Redis server (its backups are written with --to and loaded by hand)."""
        parts = parse_id(ident) if ident else None
        if ident and parts is None:
            raise UsageError(not_an_id(ident))
        name = source_name or (parts[0] if parts else None)
        if name is None:
            if len(self.config.sources) > 1:
                raise UsageError(f"several sources are configured ({self.set_names()}); pass --source NAME to choose the one to restore")
            source = self.source()
        else:
            chosen = self.sources([name])
            if not chosen:
                raise UsageError(f"{name!r} is not a configured source (configured: {self.set_names()}); restore a backup "
                                 "of another set to a new file with --to PATH")
            source = chosen[0]
        refusal = source.restore_refusal()
        if refusal:
            raise UsageError(refusal)
        return source

    def backup_sets(self) -> list[BackupSet]:
        """Return the configured backup sets: one per source (its set name and kind), the main source first;
        none when no source is configured."""
        if not self.config.sources:
            return []
        return [BackupSet(source.name(), source.kind) for source in self.sources()]

    def scope(self, found: list[BackupSet]) -> list[BackupSet] | None:
        """Given the sets found somewhere, return those `list` and `status` show: the configured sets, else the
        sets named BACKUP_NAME, else None (nothing configured to scope by: every set)."""
        if self.config.sources:
            return self.backup_sets()
        if self.config.backup_name:
            return [found_set for found_set in found if found_set.name == self.config.backup_name]
        return None

    def remote(self) -> Destination | None:
        settings = self.config.s3
        if settings is None:
            return None
        if self._remote is None:
            from jobs.destinations.s3 import S3Destination  # boto3 costs ~80 ms of start-up: only when a bucket is set

            self._remote = S3Destination(settings.bucket, settings.prefix, settings.endpoint_url, settings.region)
        return self._remote

    def policies(self) -> list[tuple[Destination, retention.Policy]]:
        """Return each destination with its retention policy: local, then the bucket when configured."""
        cfg = self.config
        sides: list[tuple[Destination, retention.Policy]] = [(self.local, policy_of(cfg.keeping, cfg))]
        remote = self.remote()
        if remote is not None and cfg.s3 is not None:
            sides.append((remote, policy_of(cfg.s3.keeping, cfg)))
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
            min_free=self.config.min_free,
            allow_empty=self.config.allow_empty,
            deletion_lock=lambda: for_deletion(self.config.backup_dir),
            recipients=self.config.encryption_recipients,
        )


def policy_of(keeping: Keeping, config: Config) -> retention.Policy:
    """Return the retention policy of one side (the volume or the bucket) of the configuration."""
    return retention.Policy(keeping.retention_days, config.keep_min, keeping.tiers, config.timezone, keeping.safety_days)
