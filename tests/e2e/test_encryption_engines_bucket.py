"""Encrypted PostgreSQL and Redis backups restored from the bucket alone, on an empty volume (issue 20), through
the command line: the bytes in the bucket hold no marker, `restore --from-s3 --to` decrypts with the identity, and
the engine's stock tool takes the result (pg_restore into a fresh database, a fresh redis-server loading the RDB)."""

from pathlib import Path
import shutil
import subprocess

from jobs import encryption
from tests.conftest import run_worker
from tests.e2e.test_restore_at_start import s3_env
from tests.postgres.conftest import ADMIN, HOST, PORT, digests, make_db, url_for  # noqa: F401
from tests.redis.servers import everything, fill, load_into_fresh_server, redis_server
from tests.s3.conftest import (ACCESS_KEY, REGION, SECRET, aws_env, boto_session, bucket, client_for,  # noqa: F401
                               free_port, moto_endpoint, s3_client, s3_endpoint, s3_server)


def keyed(tmp_path: Path, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Return the environment that backs up encrypted (recipients only) and the one that restores (the identity)."""
    secret, recipient = encryption.new_identity()
    (tmp_path / "key.txt").write_text(secret + "\n")
    sealed = {**env, "BACKUP_ENCRYPTION_RECIPIENTS": recipient}
    return sealed, {**sealed, "BACKUP_ENCRYPTION_IDENTITY_FILE": str(tmp_path / "key.txt")}


def only_ciphertext(s3_client, bucket: str, marker: bytes) -> None:
    keys = [item["Key"] for item in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    artifacts = [key for key in keys if key.endswith(".zst.age")]
    assert artifacts and all(not key.endswith(".zst") for key in keys)
    assert all(marker not in s3_client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys)


def test_an_encrypted_postgresql_backup_comes_back_from_the_bucket_alone(
        tmp_path: Path, worker_env, make_db, moto_endpoint, bucket, s3_client) -> None:
    app = make_db("sealed", populated=True, events=500)
    before = digests(app)
    env = {**{k: v for k, v in worker_env.items() if k != "BACKUP_SOURCE"}, "DATABASE_URL": url_for(app),
           **s3_env(moto_endpoint, bucket)}
    sealed, opened = keyed(tmp_path, env)
    done = run_worker(["backup"], sealed, cwd=tmp_path)
    assert done.code == 0, done.stderr
    only_ciphertext(s3_client, bucket, b"@example.com")
    shutil.rmtree(tmp_path / "backups")  # an empty volume
    out = tmp_path / "shop.pgdump"
    restored = run_worker(["restore", "--latest", "--from-s3", "--to", str(out)], opened, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    target = make_db("sealed_target")
    subprocess.run(["pg_restore", "--no-owner", "--exit-on-error", "-h", HOST, "-p", str(PORT), "-U", ADMIN,
                    "-d", target, str(out)], check=True, capture_output=True)
    assert digests(target) == before


def test_an_encrypted_redis_backup_comes_back_from_the_bucket_alone(
        tmp_path: Path, worker_env, moto_endpoint, bucket, s3_client) -> None:
    with redis_server(tmp_path / "source") as server:
        fill(server)
        server.client(0).set("marker", "sealed-marker-value-0042")
        expected = everything(server)
        env = {**worker_env, "BACKUP_SOURCE": server.url(), **s3_env(moto_endpoint, bucket)}
        sealed, opened = keyed(tmp_path, env)
        done = run_worker(["backup"], sealed, cwd=tmp_path)
        assert done.code == 0, done.stderr
    only_ciphertext(s3_client, bucket, b"sealed-marker-value-0042")
    shutil.rmtree(tmp_path / "backups")
    out = tmp_path / "restore" / "dump.rdb"
    out.parent.mkdir()
    restored = run_worker(["restore", "--latest", "--from-s3", "--to", str(out)], opened, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert subprocess.run(["redis-check-rdb", str(out)], capture_output=True).returncode == 0
    with load_into_fresh_server(out, tmp_path / "fresh") as fresh:
        assert everything(fresh) == expected
