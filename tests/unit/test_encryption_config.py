"""The encryption variables in the configuration (issue 20): checked at start, the identities secret (masked,
scrubbed, withheld from children), the recipients shown by their fingerprints."""

import os
from pathlib import Path
import sys

import pytest

from jobs import encryption, execute
from jobs.redact import scrub
from worker.config import ConfigError, load_config


def load(tmp_path: Path, **env: str):
    return load_config(env, cwd=tmp_path)


def problems(tmp_path: Path, **env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **env)
    return caught.value.problems


def test_unset_means_no_encryption(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.encryption_recipients == () and config.encryption_identities == ()
    described = config.describe()
    assert described["BACKUP_ENCRYPTION_RECIPIENTS"] == [] and described["BACKUP_ENCRYPTION_IDENTITY"] is None


def test_recipients_are_read_in_order_and_shown_by_their_fingerprints(tmp_path: Path) -> None:
    _, first = encryption.new_identity()
    _, second = encryption.new_identity()
    config = load(tmp_path, BACKUP_ENCRYPTION_RECIPIENTS=f"{first},\n{second}")
    assert [recipient.text for recipient in config.encryption_recipients] == [first, second]
    assert config.describe()["BACKUP_ENCRYPTION_RECIPIENTS"] == encryption.fingerprints(config.encryption_recipients)


def test_an_invalid_recipient_is_a_problem_naming_the_variable(tmp_path: Path) -> None:
    found = problems(tmp_path, BACKUP_ENCRYPTION_RECIPIENTS="age1qqq, ssh-ed25519 AAAA")
    assert found[0].startswith("BACKUP_ENCRYPTION_RECIPIENTS: entry 1 ('age1qqq') is not a valid recipient")


def test_identity_problems_name_the_variable(tmp_path: Path) -> None:
    identity, _ = encryption.new_identity()
    (tmp_path / "key.txt").write_text(identity)
    both = problems(tmp_path, BACKUP_ENCRYPTION_IDENTITY=identity, BACKUP_ENCRYPTION_IDENTITY_FILE="key.txt")
    assert both == ["BACKUP_ENCRYPTION_IDENTITY and BACKUP_ENCRYPTION_IDENTITY_FILE are both set; set only one of them"]
    missing = problems(tmp_path, BACKUP_ENCRYPTION_IDENTITY_FILE="nope.txt")
    assert missing[0].startswith(f"BACKUP_ENCRYPTION_IDENTITY_FILE='{tmp_path / 'nope.txt'}' does not exist")
    garbage = problems(tmp_path, BACKUP_ENCRYPTION_IDENTITY=identity[:-3])
    assert "BACKUP_ENCRYPTION_IDENTITY: line 1 is not a valid age identity" in garbage[0]
    assert identity[:-3] not in " ".join(garbage)


def test_identities_are_secret_masked_and_scrubbed(tmp_path: Path) -> None:
    identity, recipient = encryption.new_identity()
    config = load(tmp_path, BACKUP_ENCRYPTION_IDENTITY=identity)
    assert [each.recipient for each in config.encryption_identities] == [recipient]
    assert identity not in repr(config) and identity not in str(config.describe())
    assert config.describe()["BACKUP_ENCRYPTION_IDENTITY"] == "***"
    assert scrub(f"oops: {identity}", config.secrets()) == "oops: ***"

    other, _ = encryption.new_identity()
    (tmp_path / "keys.txt").write_text(f"# mine\n{identity}\n# break-glass\n{other}\n")
    from_file = load(tmp_path, BACKUP_ENCRYPTION_IDENTITY_FILE="keys.txt")
    assert len(from_file.encryption_identities) == 2
    assert from_file.describe()["BACKUP_ENCRYPTION_IDENTITY_FILE"] == str(tmp_path / "keys.txt")  # a path, no secret
    assert from_file.describe()["BACKUP_ENCRYPTION_IDENTITY"] is None
    assert scrub(f"{identity} and {other}", from_file.secrets()) == "*** and ***"


def test_the_identity_is_scrubbed_from_problems_when_the_configuration_is_invalid(tmp_path: Path) -> None:
    identity, _ = encryption.new_identity()
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, BACKUP_ENCRYPTION_IDENTITY=identity, BACKUP_TIMEZONE=identity)  # a slip that echoes it
    assert identity in " ".join(caught.value.problems)
    assert identity not in scrub(" ".join(caught.value.problems), caught.value.secrets)


def test_no_child_gets_the_identity_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity, _ = encryption.new_identity()
    monkeypatch.setenv("BACKUP_ENCRYPTION_IDENTITY", identity)
    monkeypatch.setenv("BACKUP_ENCRYPTION_IDENTITY_FILE", "/secrets/key.txt")
    monkeypatch.setenv("CHILD_ENV_MARKER", "kept")
    for env in (execute.child_env(), execute.child_env({"PGPASSWORD": "pw"})):
        assert "BACKUP_ENCRYPTION_IDENTITY" not in env and "BACKUP_ENCRYPTION_IDENTITY_FILE" not in env
        assert env["CHILD_ENV_MARKER"] == "kept"
    # a child started without an explicit environment (pg_restore --list, pg_dump --version) too
    printed = execute.run([sys.executable, "-c", "import os; print(sorted(os.environ))"], timeout=30)
    assert "CHILD_ENV_MARKER" in printed.stdout and "BACKUP_ENCRYPTION_IDENTITY" not in printed.stdout
    assert os.environ["BACKUP_ENCRYPTION_IDENTITY"] == identity  # the worker's own environment is untouched
