"""The verbs moved to `worker/actions/` (one module each); this module keeps the old import path working."""

from worker.actions.backup import backup_job, cmd_backup
from worker.actions.cleanup import cleanup_job, cmd_cleanup
from worker.actions.config import cmd_config
from worker.actions.context import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Context, UsageError
from worker.actions.listing import cmd_list
from worker.actions.output import human_age, report_failure, say
from worker.actions.prune import cmd_prune
from worker.actions.restore import cmd_restore, confirm
from worker.actions.status import cmd_status, status_report
from worker.actions.verify import cmd_verify
from worker.text import human_size

__all__ = [
    "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Context", "UsageError", "backup_job", "cleanup_job", "cmd_backup",
    "cmd_cleanup", "cmd_config", "cmd_list", "cmd_prune", "cmd_restore", "cmd_status", "cmd_verify", "confirm",
    "human_age", "human_size", "report_failure", "say", "status_report",
]
