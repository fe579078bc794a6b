"""The code's shape, read from the source: no import circles in jobs/ and worker/, and worker/actions/ holds the
verbs of the command line and nothing else (issue 19)."""

import argparse
import ast
import importlib
import inspect
from pathlib import Path


from worker.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("jobs", "worker")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Return the modules of jobs/ and worker/ that `name` imports anywhere: at the top, under TYPE_CHECKING or
    inside a function (a circle through a late import is still a circle of responsibilities)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            wanted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            wanted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in wanted:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def import_cycles() -> list[list[str]]:
    """Return each group of modules that import each other in a circle (Tarjan's strongly connected components),
    sorted."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_cycle_finder_sees_a_circle(tmp_path: Path) -> None:
    modules = {"jobs.a": tmp_path / "a.py", "jobs.b": tmp_path / "b.py"}
    modules["jobs.a"].write_text("from jobs.b import x\n")
    modules["jobs.b"].write_text("def late():\n    from jobs import a\n")
    assert _imports("jobs.a", modules["jobs.a"], modules) == {"jobs.b"}
    assert _imports("jobs.b", modules["jobs.b"], modules) == {"jobs.a"}


def test_no_import_cycles() -> None:
    assert import_cycles() == []


def _verbs() -> set[str]:
    subparsers = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return set(subparsers[0].choices)


def test_every_module_in_actions_is_a_verb_of_the_command_line_and_every_verb_has_one() -> None:
    verbs = _verbs()
    found = {}
    for path in sorted((ROOT / "worker" / "actions").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"worker.actions.{path.stem}")
        entries = [name for name, _ in inspect.getmembers(module, inspect.isfunction)
                   if name.startswith("cmd_") and _.__module__ == module.__name__]
        assert len(entries) == 1, f"worker/actions/{path.name} is not one verb: its cmd_* functions are {entries}"
        verb = entries[0].removeprefix("cmd_")
        assert verb in verbs, f"worker/actions/{path.name} holds cmd_{verb}, but `{verb}` is no command of the CLI"
        found[verb] = path.name
    assert set(found) == verbs, f"verbs without a module in worker/actions/: {sorted(verbs - set(found))}"
    assert not [path for path in (ROOT / "worker" / "actions").iterdir() if path.is_dir() and path.name != "__pycache__"]
