"""The process: CLI, configuration, logging, scheduler, catalog and locking. It calls `jobs`; never the reverse."""

__version__ = "0.1.0"
