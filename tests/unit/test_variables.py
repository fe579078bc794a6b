"""The one declaration of the environment variables (worker/variables.py) is the one the code and the reference
use: the reference's table is generated from it, every variable the code reads is declared (and every declared
one is read), and the configuration's defaults are the declared ones."""

from dataclasses import fields
from pathlib import Path
import re

import pytest

from tests.conftest import ROOT
from worker import variables
from worker.config import Config, load_config

REFERENCE = ROOT / "docs" / "reference.md"
# A whole string literal that looks like an environment variable (a name with an underscore), and any upper-case
# name read through `env.get("X")`, `env["X"]` (not assigned to), `os.environ.get("X")` or `os.getenv("X")`.
_LITERAL = re.compile(r"""["']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+_?)["']""")
_READ = re.compile(r"""(?:environ|env)(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["'](?!\]\s*=[^=])"""
                   r"""|getenv\(\s*["']([A-Z][A-Z0-9_]*)["']""")
# Upper-case literals in the code that are not variables the worker reads (each with why).
NOT_VARIABLES = {
    "URL_TARGET",  # a member every engine module declares (jobs.engines.conformance names it)
    "SC_CLK_TCK",  # an os.sysconf name
    "SYSTEM_DIRECTORIES",  # jobs/cleanup's __all__
    # jobs/encryption's __all__: the names of constants that hold the variables' names
    "RECIPIENTS_VARIABLE", "IDENTITY_VARIABLE", "IDENTITY_FILE_VARIABLE", "IDENTITY_VARIABLES",
    "BACKUP_SETS",  # printed by `config`, never read
    "PATH",  # the system's search path (pg_dump is looked for on it), not the worker's configuration
}


def names_in_the_code() -> dict[str, list[str]]:
    """Return every variable name the code of worker/ and jobs/ reads, with the files that name it."""
    found: dict[str, list[str]] = {}
    for path in sorted([*(ROOT / "worker").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]):
        if path == ROOT / "worker" / "variables.py":
            continue
        text = path.read_text()
        names = {match for match in _LITERAL.findall(text)}
        names |= {read or got for read, got in _READ.findall(text)}
        for name in names - NOT_VARIABLES:
            # BACKUP_SOURCE_ is the prefix of BACKUP_SOURCE_<NAME>
            name = name + "<NAME>" if name.endswith("_") else name
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_reference_table_is_the_generated_one() -> None:
    text = REFERENCE.read_text()
    assert text.count(variables.BEGIN) == 1 and text.count(variables.END) == 1
    written = text[text.index(variables.BEGIN) + len(variables.BEGIN):text.index(variables.END)]
    assert written.strip() == variables.render().strip(), \
        "docs/reference.md's variables table is stale: run `python -m worker.variables --write docs/reference.md`"


def test_writing_replaces_only_what_is_between_the_markers(tmp_path: Path) -> None:
    doc = tmp_path / "reference.md"
    doc.write_text(f"# Title\n\nbefore\n{variables.BEGIN}\nold table\n{variables.END}\nafter\n")
    assert variables.main(["--write", str(doc)]) == 0
    assert doc.read_text() == f"# Title\n\nbefore\n{variables.BEGIN}\n{variables.render()}{variables.END}\nafter\n"
    assert variables.main(["--write", str(doc)]) == 0
    assert doc.read_text().count("| `BACKUP_SOURCE` |") == 1
    doc.write_text("no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        variables.main(["--write", str(doc)])


def test_every_variable_the_code_reads_is_declared_and_every_declared_one_is_read() -> None:
    read = names_in_the_code()
    declared = {variable.name for variable in variables.VARIABLES}
    undeclared = {name: files for name, files in read.items() if name not in declared}
    assert not undeclared, f"declare these in worker/variables.py (or list them in NOT_VARIABLES): {undeclared}"
    assert not declared - set(read), f"declared in worker/variables.py but never read: {sorted(declared - set(read))}"
    assert len(declared) == len(variables.VARIABLES), "a variable is declared twice"


def test_every_declaration_has_a_known_section_and_a_one_line_description() -> None:
    for variable in variables.VARIABLES:
        assert variable.section in variables.SECTIONS, variable.name
        assert variable.description and "\n" not in variable.description, variable.name
        assert variable.default_text() and "\n" not in variable.default_text(), variable.name


def test_the_configurations_defaults_are_the_declared_ones(tmp_path: Path) -> None:
    # S3_BUCKET set so that the S3 settings (and their defaults) exist; nothing else set.
    shown = load_config({"BACKUP_DIR": str(tmp_path / "backups"), "S3_BUCKET": "bucket"}, cwd=tmp_path).describe()
    literal = {variable.name: variable.value for variable in variables.VARIABLES if variable.value is not None}
    assert literal, "no literal defaults declared"
    for name, value in literal.items():
        assert name in shown, f"{name} has a declared default but `config` does not print it"
        assert shown[name] == value, f"{name}: the configuration's default is {shown[name]!r}, declared {value!r}"
    field_defaults = {"notify_on": "NOTIFY_ON", "disk_warn_percent": "DISK_WARN_PERCENT",
                      "restore_on_start": "RESTORE_ON_START", "allow_empty": "BACKUP_ALLOW_EMPTY"}
    for item in fields(Config):
        if item.name in field_defaults:
            assert item.default == variables.default(field_defaults[item.name]), item.name


def test_a_variable_without_a_literal_default_is_asked_for_in_vain() -> None:
    with pytest.raises(KeyError):
        variables.default("BACKUP_SOURCE")
    with pytest.raises(KeyError):
        variables.default("NO_SUCH_VARIABLE")
