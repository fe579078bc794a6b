"""The process's entry point (`backup-worker`, `python -m worker`): the CLI, with the garbage collector kept out
of start-up and shut-down.

Importing the worker creates some 60,000 objects (modules, classes, functions) that live as long as the process.
With the collector on, the imports set off collections that scan them again and again, and at exit the
interpreter's last collections scan them once more: on a one-shot command such as `backup`, about 150 ms that
the user waits for and that free nothing. So the collector is off while the worker is imported; what the imports
made is then frozen (moved where the collector never looks: it is never garbage) and collection resumes for what
the command allocates; when the command has returned, everything is frozen again, as the process is about to
end and free it all at once. Reference counting still frees everything as usual.
"""

from collections.abc import Sequence
import gc


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv); return its exit code."""
    gc.disable()
    try:
        from worker.cli import main as cli_main
    finally:
        gc.freeze()
        gc.enable()
    code = cli_main(argv)
    gc.freeze()
    return code
