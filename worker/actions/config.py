"""`config`: the validated configuration, secrets masked."""

from worker.context import EXIT_OK, Context
from worker.output import say
from worker import preflight


def cmd_config(ctx: Context) -> int:
    preflight.warn(ctx.config)  # on stderr: what would stop the backups (no fitting pg_dump)
    for key, value in ctx.config.describe().items():
        if isinstance(value, list):
            value = ";".join(value)
        say(f"{key}={'' if value is None else value}")
    return EXIT_OK
