"""Cleanup rules: parsing `GLOB=AGE` pairs, and the guard that refuses rules which could sweep protected ground.

A rule's base directory is the part of its glob before the first wildcard; the rule never leaves it. The guard
compares paths both as written and with symlinks resolved.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
import os
from pathlib import Path
import re

from jobs.cleanup.matcher import WILDCARD, compile_glob, could_match, could_reach, split_pattern
from jobs.durations import format_duration, parse_duration

_EXAMPLE = "/tmp/audio/*.mp3=24h"
_SEPARATOR = re.compile(r"[;\n]")
_LABELS = ("backup directory", "app directory", "home directory")
SYSTEM_DIRECTORIES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr")


@dataclass(frozen=True)
class CleanupRule:
    pattern: str  # absolute glob as written after resolving against cwd
    base: Path  # non-glob prefix directory
    age: timedelta
    recursive: bool  # pattern contains **

    def describe(self) -> str:
        """Return the rule as an operator writes it, e.g. `/tmp/rose_audio/*.mp3=24h`."""
        return f"{self.pattern}={format_duration(self.age)}"



def parse_rules(text: str, cwd: Path) -> list[CleanupRule]:
    """Given CLEANUP_RULES (`GLOB=AGE` pairs separated by `;` or newlines) and the directory relative globs start
    from, return the rules in order. Raise ValueError naming every bad pair and how to write it."""
    rules: list[CleanupRule] = []
    problems: list[str] = []
    for pair in _SEPARATOR.split(text):
        pair = pair.strip()
        if not pair:
            continue
        try:
            rules.append(_parse_pair(pair, cwd))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("; ".join(problems))
    return rules


def _parse_pair(pair: str, cwd: Path) -> CleanupRule:
    glob, equals, age_text = pair.rpartition("=")
    glob, age_text = glob.strip(), age_text.strip()
    if not equals:
        raise ValueError(f"{pair!r} has no '='; write GLOB=AGE like {_EXAMPLE}")
    if not glob:
        raise ValueError(f"{pair!r} has no glob before '='; write GLOB=AGE like {_EXAMPLE}")
    if not age_text:
        raise ValueError(f"{pair!r} has no age after '='; write GLOB=AGE like {_EXAMPLE}")
    try:
        age = parse_duration(age_text)
    except ValueError as error:
        raise ValueError(f"{pair!r}: {error}") from None
    if not age:
        raise ValueError(f"{pair!r} has an age of zero, which would delete files still being written; "
                         "give an age like 10m or 24h")
    if glob.endswith("/"):
        raise ValueError(f"{pair!r} ends with '/'; name the files, like /app/data/tmp/* or /app/data/tmp/**")
    parts = glob.split("/")
    if any("**" in part and part != "**" for part in parts):
        raise ValueError(f"{pair!r}: '**' must be a whole path segment, like /app/data/tmp/**/*.log")
    first_wildcard = next((i for i, part in enumerate(parts) if WILDCARD.search(part)), len(parts))
    if ".." in parts[first_wildcard:]:
        raise ValueError(f"{pair!r}: '..' after a wildcard could leave the base directory; write the glob without it")
    pattern = os.path.normpath(os.path.join(os.path.abspath(cwd), glob))
    pattern = "/" + pattern.lstrip("/")  # normpath keeps a leading '//'
    base, segments = split_pattern(pattern)
    return CleanupRule(pattern=pattern, base=Path(base), age=age, recursive="**" in segments)


def dangerous_rule_reason(rule: CleanupRule, protected: list[Path], protected_files: Sequence[Path] = ()) -> str | None:
    """Given a rule, the protected directories `[backup_dir, cwd, home]` and the database's files (if any), return
    why the rule must be refused (`would sweep the backup directory /x; narrow the glob`), or None when it is
    safe. Paths are compared both as written and with symlinks resolved."""
    matchers = compile_glob(rule.pattern)
    bases = _variants(rule.base)
    if "/" in bases:
        return "would sweep the root directory /; point it at a narrower directory"
    for system in SYSTEM_DIRECTORIES:
        if any(_relative_parts(base, system) is not None for base in bases):
            return f"would sweep the system directory {system}; cleanup is for the app's temp and audio files"
    backup_dir, *others = protected
    for index, directory in enumerate(others, start=1):  # the app and home directories: never an ancestor
        label = _LABELS[index] if index < len(_LABELS) else "protected directory"
        if any(_relative_parts(target, base) is not None for base in bases for target in _variants(directory)):
            return f"would sweep the {label} {directory}; point it at a subdirectory"
    for base in bases:
        for target in _variants(backup_dir):
            inside = _relative_parts(base, target)
            if inside is not None:
                where = "inside the" if inside else "the"
                return f"would sweep {where} backup directory {backup_dir}; point it elsewhere"
            below = _relative_parts(target, base)
            if below is not None and could_reach(matchers, below):
                return f"would sweep the backup directory {backup_dir}; narrow the glob so it cannot reach it"
    for candidate in protected_files:
        for base in bases:
            for target in _variants(candidate):
                below = _relative_parts(target, base)
                if below and could_match(matchers, below):
                    return f"would delete the database file {candidate}; narrow the glob so it cannot match it"
    return None


def _variants(path: Path) -> set[str]:
    return {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}


def _relative_parts(path: str, ancestor: str) -> tuple[str, ...] | None:
    """Return the names leading from `ancestor` down to `path`, or None when `path` is not at or below it."""
    if path == ancestor:
        return ()
    prefix = ancestor.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    return tuple(path[len(prefix):].split("/"))

