"""Finding a pg_dump (and the pg_restore beside it) that fits a PostgreSQL server.

pg_dump refuses a server of a newer major ("aborting because of server version mismatch"), and dumps from a
much newer one may restore badly, so we take the same major as the server or the nearest newer one, never an
older one. With PG_BIN_DIR set, only that directory is looked at (the operator chose it); otherwise every
`pg_dump` on PATH and under the usual package directories. Versions come from running `<bin> --version`, never
from paths. Debian's /usr/bin/pg_dump is `pg_wrapper`, a script that picks a version by its own rules, so it is
passed over: the binaries it would pick are found under /usr/lib/postgresql/*/bin directly.
"""

from dataclasses import dataclass
import functools
import glob
import os
from pathlib import Path
import re

from jobs import execute
from jobs.errors import SourceError

PACKAGE_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin")
_VERSION = re.compile(r"\(PostgreSQL\)\s+(?P<major>\d+)(?:\.(?P<minor>\d+))?(?:\.(?P<patch>\d+))?")

Major = tuple[int, ...]  # (16,) from version 10 on, (9, 6) before


@dataclass(frozen=True)
class Tools:
    """A pg_dump and the pg_restore of the same installation."""

    pg_dump: Path
    pg_restore: Path
    version: str  # "16.4"
    major: Major


def parse_version(text: str) -> tuple[str, Major] | None:
    """Given `pg_dump --version` output, return ("16.4", (16,)) or ("9.6.24", (9, 6)); None if it is not one."""
    match = _VERSION.search(text)
    if not match:
        return None
    major, minor, patch = int(match["major"]), match["minor"], match["patch"]
    if major >= 10:
        return (f"{major}.{minor}" if minor else str(major)), (major,)
    if minor is None:
        return None
    return ".".join(part for part in (str(major), minor, patch) if part), (major, int(minor))


def server_version(num: int) -> tuple[str, Major]:
    """Given `server_version_num` (150020, 90624), return ("15.20", (15,)) or ("9.6.24", (9, 6))."""
    if num >= 100000:
        return f"{num // 10000}.{num % 10000}", (num // 10000,)
    return f"{num // 10000}.{num // 100 % 100}.{num % 100}", (num // 10000, num // 100 % 100)


def major_text(major: Major) -> str:
    return ".".join(map(str, major))


def bin_dir() -> str | None:
    """Return PG_BIN_DIR, the operator's choice of client directory, if set."""
    return os.environ.get("PG_BIN_DIR") or None


def candidate_dirs(bin_dir: str | None = None) -> list[Path]:
    """Return the directories to look for pg_dump in, in order of preference, without duplicates."""
    if bin_dir:
        return [Path(bin_dir)]
    found = [Path(entry) for entry in os.environ.get("PATH", "").split(os.pathsep) if entry]
    for pattern in PACKAGE_DIRS:
        found += [Path(path) for path in sorted(glob.glob(pattern), reverse=True)]
    unique: dict[str, Path] = {}
    for directory in found:
        unique.setdefault(os.path.realpath(directory), directory)
    return list(unique.values())


def _is_wrapper(program: Path) -> bool:
    return Path(os.path.realpath(program)).name == "pg_wrapper"


def program_version(program: Path) -> tuple[str, Major] | None:
    """Return the version `program --version` reports, or None if it does not run or says something else."""
    try:
        stat = program.stat()
    except OSError:
        return None
    return _cached_version(str(program), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_version(program: str, _mtime_ns: int, _size: int) -> tuple[str, Major] | None:
    try:
        completed = execute.run([program, "--version"], timeout=20)
    except (OSError, execute.Timeout):
        return None
    return parse_version(completed.stdout) if completed.code == 0 else None


def installed(bin_dir: str | None = None) -> list[Tools]:
    """Return every usable pg_dump with a pg_restore beside it, in order of preference (wrappers passed over)."""
    tools, seen = [], set()
    for directory in candidate_dirs(bin_dir):
        pg_dump, pg_restore = directory / "pg_dump", directory / "pg_restore"
        if not (os.access(pg_dump, os.X_OK) and os.access(pg_restore, os.X_OK)) or _is_wrapper(pg_dump):
            continue
        real = os.path.realpath(pg_dump)
        if real in seen:
            continue
        seen.add(real)
        version = program_version(pg_dump)
        if version is not None:
            tools.append(Tools(pg_dump, pg_restore, version[0], version[1]))
    return tools


def choose(server: Major, available: list[Tools]) -> Tools | None:
    """Return the tools of the server's major, or of the nearest newer one (newest patch first); never older."""
    fitting = [tools for tools in available if tools.major >= server]
    if not fitting:
        return None
    nearest = min(tools.major for tools in fitting)
    same = [tools for tools in fitting if tools.major == nearest]
    return max(same, key=lambda tools: _patch(tools.version))


def _patch(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def install_hint(major: Major) -> str:
    """Return how to install a PostgreSQL client of `major` (Debian, Railway) or point PG_BIN_DIR at one."""
    package = f"postgresql-client-{major_text(major)}"
    return (f"install the PostgreSQL {major_text(major)} client: on Debian or Ubuntu `apt-get install {package}` from the "
            f"PGDG repository (apt.postgresql.org), on Railway add {package} to the build's apt packages "
            f"(RAILPACK_DEPLOY_APT_PACKAGES, NIXPACKS_APT_PKGS or the Dockerfile), or set PG_BIN_DIR to a directory "
            f"holding pg_dump and pg_restore {major_text(major)} or newer")


def tools_for(server: Major, server_text: str, bin_dir: str | None = None) -> Tools:
    """Return the tools to dump a server of major `server`. Raise SourceError naming the client to install."""
    available = installed(bin_dir)
    chosen = choose(server, available)
    if chosen is not None:
        return chosen
    where = f"PG_BIN_DIR={bin_dir}" if bin_dir else "PATH or " + ", ".join(PACKAGE_DIRS)
    if available:
        found = ", ".join(f"{tools.version} ({tools.pg_dump.parent})" for tools in available)
        have = f"only older pg_dump versions are installed ({found}), and an older pg_dump cannot dump it"
    else:
        have = f"no pg_dump with a pg_restore beside it was found in {where}"
    raise SourceError(f"the server runs PostgreSQL {server_text} but {have}; {install_hint(server)}")


def newest(bin_dir: str | None = None) -> Tools:
    """Return the newest installed tools (a newer pg_restore reads every older archive). Raise SourceError if none."""
    available = installed(bin_dir)
    if not available:
        where = f"PG_BIN_DIR={bin_dir}" if bin_dir else "PATH or " + ", ".join(PACKAGE_DIRS)
        raise SourceError(f"no pg_restore with a pg_dump beside it was found in {where}; install postgresql-client "
                          "(apt-get install postgresql-client) or set PG_BIN_DIR to the directory holding them")
    return max(available, key=lambda tools: (tools.major, _patch(tools.version)))
