"""What one backup cycle of a set did, as one typed value: `jobs.pipeline.run_cycle` returns it, table retention
reads it (`jobs.purge.should_purge`, `held_from_cycle`, the purge's time), and only at the edge, where a log event
or a catalog row is written, does it become fields (`Cycle.fields`), with the names the logs and SPEC give."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobs.manifest import utc_iso
from jobs.engines import HOLDS
from jobs.errors import UploadError


@dataclass
class Cycle:
    backup: str  # the backup's id (its manifest's `id`)
    artifact: str  # the artifact's file name
    size: int  # compressed bytes
    raw_size: int  # bytes of the raw snapshot
    verified: str  # what the engine's check proved ("PRAGMA integrity_check", …); empty when nothing passed
    holds: dict[str, Any] | None = None  # what the snapshot holds, for table retention (PostgreSQL's snapshot)
    flags: list[str] = field(default_factory=list)  # jobs.guard's flags on this backup (shrunk, empty_allowed, …)
    warnings: list[str] = field(default_factory=list)  # sentences for people: the guard's and the pipeline's
    uploaded: list[str] | None = None  # ids uploaded this cycle; None without a bucket (or before the upload ran)
    pruned_remote: list[str] | None = None  # ids deleted from the bucket; None when bucket retention did not run
    pruned: list[str] = field(default_factory=list)  # ids deleted from the volume
    time_anchor: datetime | None = None  # what time it is for retention after this cycle (jobs.retention.anchor)

    def fields(self) -> dict[str, Any]:
        """Return the cycle as log and catalog fields: `backup`, `artifact`, `size`, `raw_size`, `verified`, and
        `holds`, `flags`, `warnings`, `uploaded`, `pruned_remote` when there are any, `pruned`, `time_anchor`."""
        return {
            "backup": self.backup,
            "artifact": self.artifact,
            "size": self.size,
            "raw_size": self.raw_size,
            "verified": self.verified,
            **({HOLDS: self.holds} if self.holds is not None else {}),
            **({"flags": self.flags} if self.flags else {}),
            **({"warnings": self.warnings} if self.warnings else {}),
            **({"uploaded": self.uploaded} if self.uploaded is not None else {}),
            **({"pruned_remote": self.pruned_remote} if self.pruned_remote is not None else {}),
            "pruned": self.pruned,
            **({"time_anchor": utc_iso(self.time_anchor)} if self.time_anchor is not None else {}),
        }


class CycleUploadFailed(UploadError):
    """A cycle that wrote and checked its backup and ran local retention, but whose upload failed: `cycle` is what
    it did (its `uploaded` holds no id: table retention's gate stays shut), its fields the log's."""

    def __init__(self, message: str, cycle: Cycle) -> None:
        super().__init__(message, fields=cycle.fields())
        self.cycle = cycle
