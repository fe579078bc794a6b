"""What every verb shares: the configuration, the catalog, the destinations, the retention policies and the
configured backup sets."""

from dataclasses import dataclass, field
from pathlib import Path
import threading
from typing import Any

from jobs import engines, pipeline, retention
from jobs.backups import BackupSet
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.destinations.s3 import S3Destination
from jobs.engines import Source
from worker import __version__
from worker.catalog import Catalog, open_catalog
from worker.config import Config
from worker.lock import for_deletion

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked (exit 2)."""


class NamedSource:
    """A source whose backup set is named by BACKUP_NAME instead of by the source itself."""

    def __init__(self, inner: Source, name: str) -> None:
        self._inner = inner
        self._name = name

    def name(self) -> str:
        return self._name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


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
            self._catalog = open_catalog(self.config.catalog_url)
        return self._catalog

    @property
    def local(self) -> LocalDestination:
        return LocalDestination(self.config.backup_dir)

    def source(self) -> Source:
        if not self.config.source_url:
            raise UsageError("BACKUP_SOURCE is not set; set it (or DATABASE_URL) to the database to back up, like sqlite:////app/data/app.db")
        source = engines.open_source(self.config.source_url, self.cwd)
        return NamedSource(source, self.config.backup_name) if self.config.backup_name else source

    def backup_sets(self) -> list[BackupSet]:
        """Return the configured backup sets: one per source (BACKUP_NAME or the source's own name, and its
        kind); none when no source is configured."""
        if not self.config.source_url:
            return []
        source = self.source()
        return [BackupSet(source.name(), source.kind)]

    def scope(self, found: list[BackupSet]) -> list[BackupSet] | None:
        """Given the sets found somewhere, return those `list` and `status` show: the configured sets, else the
        sets named BACKUP_NAME, else None (nothing configured to scope by: every set)."""
        if self.config.source_url:
            return self.backup_sets()
        if self.config.backup_name:
            return [found_set for found_set in found if found_set.name == self.config.backup_name]
        return None

    def remote(self) -> Destination | None:
        settings = self.config.s3
        if settings is None:
            return None
        if self._remote is None:
            self._remote = S3Destination(settings.bucket, settings.prefix, settings.endpoint_url, settings.region)
        return self._remote

    def policies(self) -> list[tuple[Destination, retention.Policy]]:
        """Return each destination with its retention policy: local, then the bucket when configured."""
        cfg = self.config
        sides: list[tuple[Destination, retention.Policy]] = [(self.local, retention.Policy(cfg.retention_days, cfg.keep_min))]
        remote = self.remote()
        if remote is not None:
            sides.append((remote, retention.Policy(cfg.s3.retention_days if cfg.s3 else None, cfg.keep_min)))
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
            deletion_lock=lambda: for_deletion(self.config.backup_dir),
        )
