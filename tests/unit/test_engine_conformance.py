"""jobs.engines.conformance: what an engine module, its Source and its Checks lack of the protocols, said per member,
so that a new engine (or a member added to the protocol) cannot be half-declared and probed for at run time."""

from pathlib import Path
from types import ModuleType

import pytest

from jobs import engines
from jobs.engines import postgres, redis, sqlite


def _module(**members: object) -> ModuleType:
    module = ModuleType("jobs.engines.fake")
    module.__dict__.update({"SCHEMES": ("fake",), "KIND": "fake", "URL_TARGET": False,
                            "open_source": lambda url, cwd, name=None: None, "checker": lambda workdir, cancel: None})
    module.__dict__.update(members)
    for name, value in list(module.__dict__.items()):
        if value is None:
            del module.__dict__[name]
    return module


class _Check:
    path: Path | None = None

    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> str: return ""
    def close(self) -> None: ...


class _WholeSource(sqlite.SqliteSource):
    pass


class _NoRefusal:
    kind = "fake"
    snapshot_on_disk = False
    safety_backup = False


@pytest.mark.parametrize("members, source, checks, expected", [
    ({}, _WholeSource, (_Check,), []),
    ({"URL_TARGET": None}, _WholeSource, (_Check,), ["jobs.engines.fake.URL_TARGET is missing or not a bool"]),
    ({"KIND": 3}, _WholeSource, (_Check,), ["jobs.engines.fake.KIND is missing or not a str"]),
    ({"checker": None}, _WholeSource, (_Check,), ["jobs.engines.fake.checker() is missing"]),
    ({}, _WholeSource, (type("Bare", (), {"feed": 1, "finish": 1, "close": 1}),), ["Bare does not declare Check.path"]),
])
def test_conformance_names_each_missing_member(members, source, checks, expected) -> None:
    assert engines.conformance(_module(**members), source, checks) == expected


def test_a_source_class_missing_optional_features_is_named_member_by_member() -> None:
    problems = engines.conformance(_module(), _NoRefusal, (_Check,))
    assert "_NoRefusal does not declare Source.restore_refusal" in problems
    assert "_NoRefusal does not declare Source.restore_space" in problems
    assert "_NoRefusal does not declare Source.snapshot" in problems
    assert not any("snapshot_on_disk" in problem or "safety_backup" in problem for problem in problems)


@pytest.mark.parametrize("module", [sqlite, postgres, redis])
def test_every_engine_of_this_version_conforms(module: ModuleType) -> None:
    assert engines.conformance(module, *module.CONFORMANCE) == []
    assert module in engines.engines()
