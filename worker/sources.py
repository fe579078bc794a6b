"""The configured sources: BACKUP_SOURCE (or DATABASE_URL) and BACKUP_SOURCE_<NAME>, each opened once when the
configuration is read (`jobs.engines.open_source`, no connection made) and named by its backup set, for every
action of the process to reuse."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from jobs import engines
from jobs.artifacts import is_set_name

SOURCE_PREFIX = "BACKUP_SOURCE_"  # BACKUP_SOURCE_<NAME>: further sources, backup set `<name>` in lower case


@dataclass(frozen=True)
class ConfiguredSet:
    """One configured source, opened once when the configuration is read (no connection made) and reused by every
    action: its backup set's name, the variable that names it, its URL (a secret: never print it unmasked), the
    engine's Source (named by the set) and whether it is the main source (BACKUP_SOURCE or DATABASE_URL: the one
    RETENTION_RULES apply to)."""

    name: str
    variable: str
    url: str = field(repr=False)
    source: engines.Source = field(repr=False, compare=False)
    main: bool = False


def configured_sources(env: Mapping[str, str], cwd: Path, backup_name: str | None,
             problems: list[str]) -> tuple[str | None, tuple[ConfiguredSet, ...]]:
    """Given the environment, return the main source's URL and every source opened (no connection made), the main
    one first. Invalid URLs, names and set names used twice are added to `problems`, each naming its variable(s)."""
    main = (env.get("BACKUP_SOURCE") or env.get("DATABASE_URL") or "").strip() or None
    wanted: list[tuple[str, str | None, str]] = []  # (variable, set name or None for the source's own, url)
    if main:
        wanted.append(("BACKUP_SOURCE" if env.get("BACKUP_SOURCE") else "DATABASE_URL", backup_name, main))
    for variable in sorted(key for key in env if key.startswith(SOURCE_PREFIX)):
        name, url = variable[len(SOURCE_PREFIX):].lower(), env[variable].strip()
        if not is_set_name(name):
            problems.append(f"{variable}: {name!r} is not a backup set name; name the variable BACKUP_SOURCE_<NAME> "
                            "with letters, digits and _ only")
        elif not url:
            problems.append(f"{variable} is empty; set it to the URL of the database to back up (a Railway reference "
                            "like ${{Redis.REDIS_URL}} must name an existing service and variable) or remove it")
        else:
            wanted.append((variable, name, url))
    configured: dict[str, ConfiguredSet] = {}
    for variable, name, url in wanted:
        try:
            source = engines.open_source(url, cwd, name)
        except ValueError as error:
            problems.append(f"{variable}: {error}")
            continue
        if source.name() in configured:
            problems.append(f"{configured[source.name()].variable} and {variable} both name the backup set "
                            f"{source.name()!r}; every source needs its own set: rename one BACKUP_SOURCE_<NAME> "
                            "variable, or set BACKUP_NAME for BACKUP_SOURCE")
            continue
        configured[source.name()] = ConfiguredSet(source.name(), variable, url, source,
                                                  main=not variable.startswith(SOURCE_PREFIX))
    return main, tuple(configured.values())
