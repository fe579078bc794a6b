"""The command line: `python -m worker <command>` (also `backup-worker`). Exit 0 success, 1 the job failed,
2 bad usage or configuration. Errors are one sentence on stderr; tracebacks only with LOG_LEVEL=debug."""

import argparse
import os
from pathlib import Path
import signal
import sys
import threading
import traceback
from collections.abc import Sequence

from jobs.errors import JobError
from jobs.redact import scrub, url_secrets
from jobs.volume import explain
from worker import __version__, logs
from worker.actions.backup import cmd_backup
from worker.actions.cleanup import cmd_cleanup
from worker.actions.config import cmd_config
from worker.actions.drill import cmd_drill
from worker.actions.history import cmd_history
from worker.actions.keygen import cmd_keygen
from worker.actions.listing import cmd_list
from worker.actions.prune import cmd_prune
from worker.actions.restore import cmd_restore
from worker.actions.run import cmd_run
from worker.actions.status import cmd_status
from worker.actions.verify import cmd_verify
from worker.config import Config, ConfigError, load_config
from worker.keycheck import require_identity_opens, require_recipients_for_backups
from worker.context import EXIT_FAILED, EXIT_USAGE, Context, UsageError
from worker.monitoring.dispatch import watching
from worker.monitoring.freshness import configured_sets
from worker.purge import require_rules_fit

# `run` logs to stdout (the service's log stream). One-shot commands log to stderr and print their result on
# stdout (sentences, or JSON with --json), so that `python -m worker backup --json | jq` works.
LOG_TO_STDOUT = {"run"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Backup and retention worker.")
    parser.add_argument("--version", action="version", version=f"backup-worker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    run = commands.add_parser("run", help="run the scheduler: nightly backups, hourly cleanup")
    run.add_argument("--exec", metavar="COMMAND", dest="exec_command",
                     help="also start COMMAND (split like a shell, run without one) as the app, pass it SIGTERM/SIGINT, "
                          "and exit with its exit status when it exits")
    backup = commands.add_parser("backup", help="run one backup cycle now")
    backup.add_argument("--no-upload", action="store_true", help="keep this backup local only")
    backup.add_argument("--json", action="store_true", help="print the outcome (artifact, sizes, check, uploads) as JSON")
    backup.add_argument("--take-over", action="store_true", dest="take_over",
                        help="make this source the owner of its backup set first (the same database moved, recreated or "
                             "reached under a new address); never for two live databases")
    listing = commands.add_parser("list", help="list backups, newest first")
    listing.add_argument("--json", action="store_true", help="print an array of manifests")
    listing.add_argument("--remote", action="store_true", help="include the bucket's backups")
    listing.add_argument("--all", action="store_true", help="every backup set, not only the configured one")
    verify = commands.add_parser("verify", help="re-prove a backup: checksum, decompression, engine check")
    verify.add_argument("id", nargs="?", help="backup id (default: the newest)")
    verify.add_argument("--latest", action="store_true", help="the newest backup (the default)")
    verify.add_argument("--remote", action="store_true", help="verify the copy in the bucket")
    verify.add_argument("--source", metavar="NAME", help="the backup set to take --latest from (its name)")
    restore = commands.add_parser("restore", help="fetch, verify and restore a backup")
    restore.add_argument("id", nargs="?", help="backup id (default: the newest)")
    restore.add_argument("--latest", action="store_true", help="the newest backup (the default)")
    restore.add_argument("--from-s3", action="store_true", help="take the backup from the bucket")
    restore.add_argument("--source", metavar="NAME", help="the backup set to take --latest from (its name)")
    target = restore.add_mutually_exclusive_group()
    target.add_argument("--to", type=Path, metavar="PATH", help="restore into a new file instead of the live database")
    target.add_argument("--target-url", metavar="URL", help="restore into this database server")
    restore.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    restore.add_argument("--fallback", action="store_true",
                         help="with --latest (no id): if the newest backup is damaged, restore the newest intact older one")
    prune = commands.add_parser("prune", help="apply retention now and print the plan")
    prune.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
    prune.add_argument("--json", action="store_true",
                       help='print the plan as a JSON array of {"id", "location", "keep", "reasons"}')
    cleanup = commands.add_parser("cleanup", help="apply the cleanup rules now")
    cleanup.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
    status = commands.add_parser("status", help="last outcomes, newest backup, next runs")
    status.add_argument("--json", action="store_true")
    commands.add_parser("config", help="validate and print the configuration, secrets masked")
    history = commands.add_parser("history", help="every recorded run, newest first")
    history.add_argument("--json", action="store_true", help="print an array of runs")
    history.add_argument("--since", metavar="DURATION", help="only runs started within this long, like 36h or 7d")
    history.add_argument("--job", metavar="NAME", help="only runs of this job (backup, cleanup, verify, …)")
    drill = commands.add_parser("drill", help="restore the newest backup of each set into a scratch target and compare it")
    drill.add_argument("--source", metavar="NAME", help="drill only this backup set (its name)")
    drill.add_argument("--local", action="store_true", help="drill the copies on the volume, not the bucket's")
    drill.add_argument("--json", action="store_true", help="print the outcome (each set's checks and comparison) as JSON")
    keygen = commands.add_parser("keygen", help="print a new age identity and its recipient (encryption keys)")
    keygen.add_argument("--json", action="store_true", help="print identity, recipient and fingerprint as JSON")
    return parser


# What stops a one-shot command cleanly: SIGTERM, Ctrl-C, and a hang-up (SIGHUP: the terminal or the `railway ssh`
# session it runs in went away). Its children (pg_restore…) are stopped in order and nothing half-done commits.
ONE_SHOT_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _stop_on_signals(cancel: threading.Event) -> None:
    """Let SIGTERM, SIGINT or SIGHUP ask a one-shot job to stop cleanly; a second signal exits at once."""

    def handler(number: int, _frame: object) -> None:
        if cancel.is_set():
            sys.exit(128 + number)
        cancel.set()

    for number in ONE_SHOT_STOP_SIGNALS:
        signal.signal(number, handler)


def dispatch(ctx: Context, args: argparse.Namespace, umask: int | None = None) -> int:
    if args.command in ("run", "backup"):
        require_recipients_for_backups(ctx)  # an identity without recipients: backups meant encrypted, not plain
    if args.command in ("run", "config"):
        require_identity_opens(ctx)  # a wrong BACKUP_ENCRYPTION_IDENTITY is found now, not during a disaster
    if args.command == "run":
        return cmd_run(ctx, args.exec_command, umask)
    if args.command in ("backup", "prune", "config"):
        require_rules_fit(ctx)  # RETENTION_RULES against the database: a missing table or column is exit 2
    _stop_on_signals(ctx.cancel)
    if args.command == "backup":
        return cmd_backup(ctx, args.no_upload, args.json, args.take_over)
    if args.command == "list":
        return cmd_list(ctx, args.json, args.remote, args.all)
    if args.command == "verify":
        if args.id and args.latest:
            raise UsageError("give a backup id or --latest, not both")
        return cmd_verify(ctx, args.id, args.remote, args.source)
    if args.command == "restore":
        if args.id and args.latest:
            raise UsageError("give a backup id or --latest, not both")
        if args.fallback and args.id:
            raise UsageError("--fallback goes with --latest (no id): it picks an older intact backup when the newest is damaged")
        return cmd_restore(ctx, args.id, args.from_s3, args.to, args.target_url, args.yes, args.fallback, args.source)
    if args.command == "prune":
        return cmd_prune(ctx, args.dry_run, args.json)
    if args.command == "cleanup":
        return cmd_cleanup(ctx, args.dry_run)
    if args.command == "status":
        return cmd_status(ctx, args.json)
    if args.command == "drill":
        return cmd_drill(ctx, args.source, args.local, args.json)
    if args.command == "history":
        return cmd_history(ctx, args.json, args.since, args.job)
    return cmd_config(ctx)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    umask = os.umask(0o077)  # backups, snapshots, journals and the catalog are readable by this user only
    debug = os.environ.get("LOG_LEVEL", "").strip().lower() == "debug"
    if args.command == "keygen":  # needs no configuration: it runs wherever the identity will be kept
        return cmd_keygen(args.json)
    try:
        config = load_config()
    except ConfigError as error:
        print(f"invalid configuration ({len(error.problems)} problem{'s' if len(error.problems) > 1 else ''}):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {scrub(problem, error.secrets)}", file=sys.stderr)
        return EXIT_USAGE
    secrets = config.secrets() + url_secrets(getattr(args, "target_url", None))  # restore --target-url
    with logs.scrubbed_output(secrets):  # whatever is printed from here on: results, errors, log lines
        return _run(config, args, secrets, umask, debug)


def _run(config: Config, args: argparse.Namespace, secrets: list[str], umask: int, debug: bool) -> int:
    stream = sys.stdout if args.command in LOG_TO_STDOUT else sys.stderr
    logs.configure(config.log_level, config.log_format, secrets, stream)
    ctx = Context(config=config, cwd=Path.cwd())
    try:
        with watching(config, ctx.cancel, configured_sets(config, ctx.cwd)):  # notifications, disk warnings
            return dispatch(ctx, args, umask)  # the umask we were started with is the app's (run --exec)
    except UsageError as error:
        print(str(error), file=sys.stderr)
        return EXIT_USAGE
    except JobError as error:
        print(str(error), file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        if debug:  # the traceback, printed here so that it goes through the scrubbed stderr too
            traceback.print_exc()
        elif isinstance(error, OSError):
            print(explain(error, config.backup_dir), file=sys.stderr)
        else:
            print(f"unexpected {type(error).__name__}: {error}; run again with LOG_LEVEL=debug for the traceback", file=sys.stderr)
        return EXIT_FAILED
