"""Encrypted backups through the command line and a bucket over HTTP (issue 20): nothing readable leaves the
worker, the stock tools restore by hand, every restore path decrypts with the identity and refuses loudly without
it, a wrong identity is found at start, a set mixing older plain and newer encrypted backups stays whole."""

import json
from pathlib import Path
import shutil
import sqlite3

from jobs import encryption
from tests.conftest import run_worker
from tests.pipes import pipe
from tests.e2e.test_restore_at_start import PREFIX, app_command, lose, s3_env, start, started, wait_app  # noqa: F401
from tests.s3.conftest import (ACCESS_KEY, REGION, SECRET, aws_env, boto_session, bucket, client_for,  # noqa: F401
                               free_port, moto_endpoint, s3_client, s3_endpoint, s3_server)

MARKER = b"message 7 message 7"  # what the app's rows hold, in clear


def keys(tmp_path: Path) -> tuple[str, Path]:
    secret, recipient = encryption.new_identity()
    key_file = tmp_path / "key.txt"
    key_file.write_text(secret + "\n")
    return recipient, key_file


def rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_nothing_readable_reaches_the_bucket_and_a_person_restores_it_by_hand(
        tmp_path: Path, worker_env, moto_endpoint, bucket, s3_client) -> None:
    recipient, key_file = keys(tmp_path)
    env = {**worker_env, **s3_env(moto_endpoint, bucket), "BACKUP_ENCRYPTION_RECIPIENTS": recipient}
    done = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert done.code == 0, done.stderr
    artifact = json.loads(done.stdout)["artifact"]
    assert artifact.endswith(".sqlite.zst.age")
    objects = {item["Key"]: s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
               for item in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert set(objects) == {f"{PREFIX}/{artifact}", f"{PREFIX}/{artifact}.json"}
    assert all(MARKER not in body for body in objects.values())  # neither the artifact nor the manifest
    assert json.loads(objects[f"{PREFIX}/{artifact}.json"])["encryption"]["format"] == "age"
    (tmp_path / "by-hand.zst.age").write_bytes(objects[f"{PREFIX}/{artifact}"])
    pipe(["age", "-d", "-i", str(key_file), "by-hand.zst.age"], ["zstd", "-d", "-q", "-o", "by-hand.db"], cwd=tmp_path)
    assert rows(tmp_path / "by-hand.db") == 1000
    listed = run_worker(["list", "--remote"], env, cwd=tmp_path)
    assert listed.code == 0 and "encrypted" in listed.stdout
    status = run_worker(["status", "--json"], env, cwd=tmp_path)
    assert json.loads(status.stdout)["newest_backup_encrypted"] is True
    assert "encrypted" in run_worker(["status"], env, cwd=tmp_path).stdout


def test_without_the_identity_verify_checks_the_checksum_and_every_restore_refuses_naming_the_variable(
        tmp_path: Path, worker_env, moto_endpoint, bucket) -> None:
    recipient, key_file = keys(tmp_path)
    env = {**worker_env, **s3_env(moto_endpoint, bucket), "BACKUP_ENCRYPTION_RECIPIENTS": recipient}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    verified = run_worker(["verify", "--latest"], env, cwd=tmp_path)
    assert verified.code == 0 and "size, sha256 passed" in verified.stdout
    assert "BACKUP_ENCRYPTION_IDENTITY" in verified.stdout  # says the deep check needs it
    for args in (["restore", "--latest", "--to", str(tmp_path / "a.db")],
                 ["restore", "--latest", "--from-s3", "--to", str(tmp_path / "b.db")],
                 ["restore", "--latest", "--yes"]):
        refused = run_worker(args, env, cwd=tmp_path)
        assert refused.code == 1, args
        assert "BACKUP_ENCRYPTION_IDENTITY" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "a.db").exists() and not (tmp_path / "b.db").exists()
    with_key = {**env, "BACKUP_ENCRYPTION_IDENTITY_FILE": str(key_file)}
    deep = run_worker(["verify", "--latest", "--remote"], with_key, cwd=tmp_path)
    assert deep.code == 0 and "age authentication" in deep.stdout and "PRAGMA integrity_check" in deep.stdout


def test_a_wrong_identity_is_found_at_start_not_during_the_disaster(tmp_path: Path, worker_env) -> None:
    recipient, _ = keys(tmp_path)
    other, _ = encryption.new_identity()
    env = {**worker_env, "BACKUP_ENCRYPTION_RECIPIENTS": recipient}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    wrong = {**env, "BACKUP_ENCRYPTION_IDENTITY": other}
    for args in (["config"], ["run", "--exec", "true"]):
        refused = run_worker(args, wrong, cwd=tmp_path)
        assert refused.code == 2, args
        assert "opens none of the recipients" in refused.stderr and other not in refused.stderr + refused.stdout


def test_restore_at_start_from_the_bucket_alone_decrypts_and_without_the_identity_fails_loudly(
        tmp_path: Path, worker_env, moto_endpoint, bucket, started) -> None:
    recipient, key_file = keys(tmp_path)
    db = Path(worker_env["BACKUP_SOURCE"].removeprefix("sqlite:///"))
    env = {**worker_env, **s3_env(moto_endpoint, bucket), "BACKUP_ENCRYPTION_RECIPIENTS": recipient,
           "RESTORE_ON_START": "if-missing"}
    assert run_worker(["backup"], env, cwd=tmp_path).code == 0
    shutil.rmtree(tmp_path / "backups")  # the volume is lost: the bucket alone holds the backup
    lose(db)
    blind = start(started, ["run", "--exec", app_command(tmp_path, db)], env, tmp_path)
    assert blind.finish(90) == 1
    assert "BACKUP_ENCRYPTION_IDENTITY" in "".join(blind.stderr) and not db.exists()
    worker = start(started, ["run", "--exec", app_command(tmp_path, db)],
                   {**env, "BACKUP_ENCRYPTION_IDENTITY_FILE": str(key_file)}, tmp_path)
    assert worker.wait_for("restore.on_start", 90)
    assert wait_app(tmp_path)["rows"] == 1000
    assert worker.stop() == 0


def test_a_set_mixing_older_plain_and_newer_encrypted_backups_restores_both_and_keeps_them_in_retention(
        tmp_path: Path, worker_env) -> None:
    recipient, key_file = keys(tmp_path)
    plain = run_worker(["backup", "--json"], worker_env, cwd=tmp_path)
    assert plain.code == 0
    env = {**worker_env, "BACKUP_ENCRYPTION_RECIPIENTS": recipient, "BACKUP_ENCRYPTION_IDENTITY_FILE": str(key_file)}
    sealed = run_worker(["backup", "--json"], env, cwd=tmp_path)
    assert sealed.code == 0
    ids = [json.loads(result.stdout)["backup"] for result in (plain, sealed)]
    listed = json.loads(run_worker(["list", "--json"], env, cwd=tmp_path).stdout)
    assert sorted(entry["id"] for entry in listed) == sorted(ids)
    for number, ident in enumerate(ids):
        out = tmp_path / f"restored-{number}.db"
        restored = run_worker(["restore", ident, "--to", str(out)], env, cwd=tmp_path)
        assert restored.code == 0, restored.stderr
        assert rows(out) == 1000
    pruned = run_worker(["prune"], {**env, "BACKUP_KEEP_MIN": "2", "BACKUP_RETENTION_DAYS": "0"}, cwd=tmp_path)
    assert pruned.code == 0
    kept = json.loads(run_worker(["list", "--json"], env, cwd=tmp_path).stdout)
    assert sorted(entry["id"] for entry in kept) == sorted(ids)  # both count as intact slots of BACKUP_KEEP_MIN


def test_once_encryption_is_configured_no_plain_backup_is_ever_uploaded(
        tmp_path: Path, worker_env, moto_endpoint, bucket, s3_client) -> None:
    recipient, _ = keys(tmp_path)
    env = {**worker_env, **s3_env(moto_endpoint, bucket)}
    assert run_worker(["backup", "--no-upload"], env, cwd=tmp_path).code == 0  # made before encryption, never uploaded
    sealed = run_worker(["backup", "--json"], {**env, "BACKUP_ENCRYPTION_RECIPIENTS": recipient}, cwd=tmp_path)
    assert sealed.code == 0, sealed.stderr
    keys_there = [item["Key"] for item in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys_there and all(".zst.age" in key for key in keys_there)
    assert all(MARKER not in s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys_there)
    assert [event for event in sealed.events if event.get("event") == "offsite.plain_not_uploaded"]


def test_a_wrong_identity_never_makes_a_restore_take_an_older_plain_backup(tmp_path: Path, worker_env) -> None:
    recipient, _ = keys(tmp_path)
    stranger, _ = encryption.new_identity()
    assert run_worker(["backup"], worker_env, cwd=tmp_path).code == 0  # an older, unencrypted backup
    assert run_worker(["backup"], {**worker_env, "BACKUP_ENCRYPTION_RECIPIENTS": recipient}, cwd=tmp_path).code == 0
    wrong = {**worker_env, "BACKUP_ENCRYPTION_IDENTITY": stranger}
    for args in (["restore", "--latest", "--fallback", "--to", str(tmp_path / "x.db")],
                 ["verify", "--latest"]):
        refused = run_worker(args, wrong, cwd=tmp_path)
        assert refused.code == 1, args
        assert "none of the identities in BACKUP_ENCRYPTION_IDENTITY opens" in refused.stderr
    assert not (tmp_path / "x.db").exists()


def test_encryption_meant_but_not_configured_never_gives_plain_backups(tmp_path: Path, worker_env) -> None:
    """An identity without recipients, or recipients set to blank text (an unresolved reference), is exit 2 for
    the commands that write backups: never plain backups while encryption was meant (litestream#790)."""
    secret, _ = encryption.new_identity()
    for env, command in (({"BACKUP_ENCRYPTION_IDENTITY": secret}, ["backup"]),
                         ({"BACKUP_ENCRYPTION_IDENTITY": secret}, ["run", "--exec", "true"]),
                         ({"BACKUP_ENCRYPTION_RECIPIENTS": "  \n "}, ["backup"]),
                         ({"BACKUP_ENCRYPTION_RECIPIENTS": " "}, ["config"])):
        refused = run_worker(command, {**worker_env, **env}, cwd=tmp_path)
        assert refused.code == 2, (env, command)
        assert "BACKUP_ENCRYPTION_RECIPIENTS" in refused.stderr and secret not in refused.stderr + refused.stdout
    assert not list((tmp_path / "backups").glob("*.zst")) if (tmp_path / "backups").exists() else True
    restore_only = run_worker(["list"], {**worker_env, "BACKUP_ENCRYPTION_IDENTITY": secret}, cwd=tmp_path)
    assert restore_only.code == 0  # a machine that only restores needs no recipient


def test_a_crash_between_the_two_renames_keeps_an_encrypted_backup(tmp_path: Path) -> None:
    """An encrypted artifact published without its manifest (the manifest still under its temporary name, its
    writer dead) is recovered, as a plain one is (jobs.publish.recover_orphans via artifacts.temporary_manifest_of)."""
    from jobs import artifacts

    name = "app-20261122T020000Z.sqlite.zst.age"
    temporary = f".tmp-999999-deadbeef-{name}.json"
    assert artifacts.temporary_manifest_of(temporary) == name
    assert artifacts.temporary_manifest_of(f".tmp-999999-deadbeef-{name.removesuffix('.age')}.json") == name.removesuffix(".age")
    assert artifacts.temporary_manifest_of(".tmp-999999-deadbeef-notes.json") is None
