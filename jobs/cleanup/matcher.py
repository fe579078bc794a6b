"""The glob matcher of cleanup rules: one matcher per segment below the base, `**` as a state that stays.

`*`, `?` and `[...]` match within one path segment, dot files included; `**` matches any number of directories.
Matching is a small state machine over the segments, so a directory walk can tell at each directory whether
anything below it can still match (and skip it if not).
"""

from collections.abc import Callable, Sequence
import fnmatch
import re

WILDCARD = re.compile(r"[*?[]")

# One matcher per glob segment below the base; None stands for `**`.
Matcher = Callable[[str], object] | None


def split_pattern(pattern: str) -> tuple[str, list[str]]:
    """Split an absolute, normalised glob into its base directory and the segments below it."""
    parts = pattern.split("/")[1:]
    first_wildcard = next((i for i, part in enumerate(parts) if WILDCARD.search(part)), len(parts) - 1)
    return "/" + "/".join(parts[:first_wildcard]), parts[first_wildcard:]


def compile_glob(pattern: str) -> tuple[Matcher, ...]:
    """Compile the segments below the base. `**` never comes last: a trailing `**` reads as `**/*`."""
    segments: list[str] = []
    for segment in split_pattern(pattern)[1]:
        if not (segment == "**" and segments and segments[-1] == "**"):
            segments.append(segment)
    if segments[-1] == "**":
        segments.append("*")
    return tuple(_matcher(segment) for segment in segments)


def _matcher(segment: str) -> Matcher:
    if segment == "**":
        return None
    if segment == "*":
        return _any_name
    if not WILDCARD.search(segment):
        return segment.__eq__
    return re.compile(fnmatch.translate(segment)).match


def _any_name(name: str) -> bool:
    return True


def _closure(states: set[int], matchers: tuple[Matcher, ...]) -> frozenset[int]:
    """Add the states a `**` reaches by matching no directory at all."""
    result: set[int] = set()
    todo = list(states)
    while todo:
        state = todo.pop()
        if state not in result:
            result.add(state)
            if matchers[state] is None:
                todo.append(state + 1)
    return frozenset(result)


def descend(states: frozenset[int], matchers: tuple[Matcher, ...], name: str) -> frozenset[int]:
    """Return the states for the entries of subdirectory `name`; empty when nothing below it can match."""
    last = len(matchers) - 1
    after: set[int] = set()
    for state in states:
        matcher = matchers[state]
        if matcher is None:
            after.add(state)
        elif state < last and matcher(name):
            after.add(state + 1)
    return _closure(after, matchers) if after else frozenset()


def start_states(matchers: tuple[Matcher, ...]) -> frozenset[int]:
    return _closure({0}, matchers)


def could_reach(matchers: tuple[Matcher, ...], directories: Sequence[str]) -> bool:
    """Whether the glob can match files inside the directory at `directories` below its base."""
    states = start_states(matchers)
    for name in directories:
        states = descend(states, matchers, name)
        if not states:
            return False
    return True


def could_match(matchers: tuple[Matcher, ...], parts: Sequence[str]) -> bool:
    """Whether the glob matches the file at `parts` (directories, then the name) below its base."""
    states = start_states(matchers)
    for name in parts[:-1]:
        states = descend(states, matchers, name)
    matcher = matchers[-1]  # never `**`: a trailing one reads as `**/*`
    return len(matchers) - 1 in states and matcher is not None and bool(matcher(parts[-1]))

