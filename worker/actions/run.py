"""`run [--exec COMMAND]`: the long-running worker (the scheduler, /healthz, the app with --exec). The mechanics
live in `worker/service.py`; this is the verb's entry."""

from worker.context import Context


def cmd_run(ctx: Context, exec_command: str | None, umask: int | None) -> int:
    from worker.service import serve  # APScheduler: only `run` pays for its import

    ctx.source()
    return serve(ctx, exec_command, umask)  # restore at start first, then the checks that read the database
