"""Encryption through the command line (issue 20, first increment): `keygen` and the stock `age` CLI, the
variables checked by `config` (exit 2), the identity masked and never in any output, withheld from the app of
`run --exec`, and a recipient without pyrage refused."""

import io
import json
from pathlib import Path
import shlex
import subprocess
import sys

from jobs import encryption
from tests.conftest import ROOT, run_worker


def keygen(env: dict[str, str], *args: str):
    result = run_worker(["keygen", *args], env)
    assert result.code == 0, result.stderr
    return result


def test_keygen_prints_an_identity_file_that_round_trips_with_ours_and_the_stock_age_cli(tmp_path: Path, worker_env) -> None:
    # keygen needs no configuration: it works where the identity will be kept, and on a worker not set up yet
    result = keygen({**worker_env, "BACKUP_SCHEDULE": "every night", "BACKUP_ENCRYPTION_RECIPIENTS": "age1broken"})
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# created: ") and lines[1].startswith("# public key: age1")
    recipient, identity = lines[1].removeprefix("# public key: "), lines[2]
    assert identity.startswith("AGE-SECRET-KEY-1") and len(lines) == 3
    assert "losing it loses every backup" in result.stderr and "password manager" in result.stderr
    assert f"BACKUP_ENCRYPTION_RECIPIENTS={recipient}" in result.stderr and identity not in result.stderr
    key = tmp_path / "key.txt"
    key.write_text(result.stdout)

    data = b"chat transcripts " * 20_000
    theirs = subprocess.run(["age", "-r", recipient], input=data, capture_output=True, check=True).stdout
    with encryption.decrypting(io.BytesIO(theirs), encryption.load_identities(None, key)) as plain:
        assert plain.read() == data
    ours = io.BytesIO()
    with encryption.encrypting(ours, encryption.parse_recipients(recipient)) as plain:
        plain.write(data)
    assert subprocess.run(["age", "-d", "-i", str(key)], input=ours.getvalue(), capture_output=True, check=True).stdout == data


def test_keygen_json(worker_env) -> None:
    result = keygen(worker_env, "--json")
    document = json.loads(result.stdout)
    assert set(document) == {"identity", "recipient", "fingerprint"}
    (identity,) = encryption.load_identities(document["identity"], None)
    assert identity.recipient == document["recipient"] and identity.fingerprint == document["fingerprint"]
    assert "losing it" in result.stderr


def test_config_shows_recipients_by_fingerprint_and_refuses_bad_values(worker) -> None:
    _, recipient = encryption.new_identity()
    shown = worker("config", env={"BACKUP_ENCRYPTION_RECIPIENTS": recipient})
    assert shown.code == 0, shown.stderr
    assert encryption.parse_recipients(recipient)[0].fingerprint in shown.stdout
    bad = worker("config", env={"BACKUP_ENCRYPTION_RECIPIENTS": "ssh-ecdsa AAAA,age1x"})
    assert bad.code == 2 and "BACKUP_ENCRYPTION_RECIPIENTS: entry 1" in bad.stderr and "Traceback" not in bad.stderr
    both = worker("config", env={"BACKUP_ENCRYPTION_IDENTITY": "x", "BACKUP_ENCRYPTION_IDENTITY_FILE": "key.txt"})
    assert both.code == 2 and "both set" in both.stderr


def test_the_identity_is_masked_by_config_and_absent_from_every_output(worker) -> None:
    identity, _ = encryption.new_identity()
    env = {"BACKUP_ENCRYPTION_IDENTITY": identity, "LOG_LEVEL": "debug"}
    shown = worker("config", env=env)
    assert shown.code == 0, shown.stderr
    assert "BACKUP_ENCRYPTION_IDENTITY=***" in shown.stdout.splitlines()
    for result in (shown, worker("backup", env=env), worker("list", "--json", env=env), worker("status", env=env)):
        assert identity not in result.stdout + result.stderr
    echoed = worker("config", env={**env, "BACKUP_TIMEZONE": identity})  # a slip that would echo it
    assert echoed.code == 2 and "BACKUP_TIMEZONE" in echoed.stderr and identity not in echoed.stderr


def test_the_app_of_run_exec_never_sees_the_identity_variables(tmp_path: Path, worker, worker_env) -> None:
    identity, recipient = encryption.new_identity()
    (tmp_path / "key.txt").write_text(identity + "\n")
    seen = tmp_path / "app-env.json"
    app = shlex.join([sys.executable, "-c", f"import json, os; json.dump(dict(os.environ), open({str(seen)!r}, 'w'))"])
    for variable, value in (("BACKUP_ENCRYPTION_IDENTITY", identity), ("BACKUP_ENCRYPTION_IDENTITY_FILE", "key.txt")):
        result = worker("run", "--exec", app, env={variable: value, "APP_ENV_MARKER": "passed",
                                                   "BACKUP_ENCRYPTION_RECIPIENTS": recipient}, timeout=60)
        assert result.code == 0, result.stderr
        environment = json.loads(seen.read_text())
        assert environment["APP_ENV_MARKER"] == "passed"
        assert variable not in environment and identity not in json.dumps(environment)
        seen.unlink()


def without_pyrage(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the worker as if pyrage were not installed (its import fails)."""
    code = f"import sys; sys.modules['pyrage'] = None; from worker.start import main; raise SystemExit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_recipient_or_identity_without_pyrage_is_exit_2_naming_the_package(worker_env) -> None:
    _, recipient = encryption.new_identity()
    identity, _ = encryption.new_identity()
    for variable, value in (("BACKUP_ENCRYPTION_RECIPIENTS", recipient), ("BACKUP_ENCRYPTION_IDENTITY", identity)):
        completed = without_pyrage(["config"], {**worker_env, variable: value})
        assert completed.returncode == 2
        assert f"{variable} is set but the age binding pyrage cannot be imported" in completed.stderr
        assert "pip install pyrage" in completed.stderr and "Traceback" not in completed.stderr
    assert without_pyrage(["config"], worker_env).returncode == 0  # unset: the worker runs without it
    missing = without_pyrage(["keygen"], worker_env)
    assert missing.returncode == 2 and "pyrage" in missing.stderr and missing.stdout == ""
