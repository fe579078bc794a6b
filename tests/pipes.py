"""Two stock tools joined by a pipe, as a person types `age -d … | zstd -d`, without a shell: argument lists only,
both exit statuses checked."""

from pathlib import Path
import subprocess


def pipe(first: list[str], second: list[str], cwd: Path | None = None) -> bytes:
    """Run `first | second`; return what `second` wrote. Raise CalledProcessError naming the one that failed."""
    upstream = subprocess.Popen(first, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
    downstream = subprocess.run(second, stdin=upstream.stdout, capture_output=True, cwd=cwd)
    upstream.stdout.close()
    errors = upstream.stderr.read()
    if upstream.wait() != 0:
        raise subprocess.CalledProcessError(upstream.returncode, first, stderr=errors)
    if downstream.returncode != 0:
        raise subprocess.CalledProcessError(downstream.returncode, second, downstream.stdout, downstream.stderr)
    return downstream.stdout
