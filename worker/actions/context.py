"""What every verb shares: the configuration, the catalog, the destinations and the retention policies."""

from dataclasses import dataclass, field
from pathlib import Path
import threading

from jobs import engines, pipeline, retention
from jobs.destinations import Destination
from jobs.destinations.local import LocalDestination
from jobs.destinations.s3 import S3Destination
from jobs.engines import Source
from worker import __version__
from worker.catalog import Catalog, open_catalog
from worker.config import Config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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
            self._catalog = open_catalog(self.config.catalog_url)
        return self._catalog

    @property
    def local(self) -> LocalDestination:
        return LocalDestination(self.config.backup_dir)

    def source(self) -> Source:
        if not self.config.source_url:
            raise UsageError("BACKUP_SOURCE is not set; set it (or DATABASE_URL) to the database to back up, like sqlite:////app/data/app.db")
        return engines.open_source(self.config.source_url, self.cwd)

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
        )
