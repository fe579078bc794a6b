"""`python -m worker ARGS` with an app that writes files again while cleanup runs: after cleanup has planned a
rule and before it deletes, every path named in $REWRITE_PATHS (separated by os.pathsep) is written anew.

Only the moment is arranged here (the app's write lands exactly between the scan and the deletion); the command,
its configuration, output and exit code are the real ones."""

import os
import sys

import jobs.cleanup
from worker.start import main

planned = jobs.cleanup.apply_plan


def rewrite_then_apply(plan, **options):  # type: ignore[no-untyped-def]
    for path in os.environ["REWRITE_PATHS"].split(os.pathsep):
        with open(path, "wb") as file:
            file.write(b"written again by the app")
    return planned(plan, **options)


jobs.cleanup.apply_plan = rewrite_then_apply
sys.exit(main(sys.argv[1:]))
