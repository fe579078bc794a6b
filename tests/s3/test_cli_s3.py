"""Off-site copies as a user drives them: `python -m worker …` against moto's S3 server and SeaweedFS over real HTTP."""

import json
from pathlib import Path
import shutil
import subprocess

import pytest

from tests.conftest import run_worker
from .conftest import ACCESS_KEY, REGION, SECRET, free_port

pytestmark = pytest.mark.s3_servers  # every test that uses a bucket runs on moto and on SeaweedFS


@pytest.fixture
def s3_env(worker_env: dict[str, str], s3_endpoint: str, bucket: str) -> dict[str, str]:
    return {**worker_env, "S3_BUCKET": bucket, "S3_PREFIX": "prod/app", "S3_ENDPOINT_URL": s3_endpoint, "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def keys(s3_client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_backup_uploads_then_an_empty_volume_restores_byte_identical_from_the_bucket(tmp_path: Path, s3_env, s3_client, bucket) -> None:
    first = run_worker(["backup"], s3_env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    artifact = first.event("job.succeeded")["artifact"]
    assert keys(s3_client, bucket) == [f"prod/app/{artifact}", f"prod/app/{artifact}.json"]
    listed = json.loads(run_worker(["list", "--json", "--remote"], s3_env, cwd=tmp_path).stdout)
    assert [row["location"] for row in listed] == ["both"]
    expected = subprocess.run(["zstd", "-dc", str(tmp_path / "backups" / artifact)], capture_output=True, check=True).stdout

    shutil.rmtree(tmp_path / "backups")  # the volume is lost: backups, manifests and the catalog
    empty_volume = {**s3_env, "BACKUP_SOURCE": "", "BACKUP_DIR": str(tmp_path / "new-volume" / "backups")}
    (tmp_path / "new-volume").mkdir()
    assert json.loads(run_worker(["list", "--json"], empty_volume, cwd=tmp_path).stdout)[0]["location"] == "s3"
    target = tmp_path / "new-volume" / "app.db"
    restored = run_worker(["restore", "--from-s3", "--latest", "--to", str(target)], empty_volume, cwd=tmp_path)
    assert restored.code == 0, restored.stderr
    assert artifact.removesuffix(".sqlite.zst") in restored.stdout and "from s3" in restored.stdout
    assert target.read_bytes() == expected
    assert SECRET not in restored.stdout + restored.stderr


def test_an_outage_keeps_the_local_backup_fails_at_upload_and_the_next_cycle_catches_up(tmp_path: Path, s3_env, s3_client, bucket) -> None:
    down = {**s3_env, "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    failed = run_worker(["backup"], down, cwd=tmp_path)
    assert failed.code == 1
    outcome = failed.event("job.failed")
    assert outcome["stage"] == "upload"
    assert outcome["artifact"].endswith(".sqlite.zst") and outcome["size"] > 0 and outcome["raw_size"] > 0
    assert "the local backup" in failed.stderr and "is kept and the next cycle uploads it" in failed.stderr
    assert len(list((tmp_path / "backups").glob("*.sqlite.zst.json"))) == 1
    everything = failed.stdout + failed.stderr
    assert SECRET not in everything and ACCESS_KEY not in everything
    sentences = [line for line in failed.stderr.splitlines() if not line.startswith("{")]
    assert len(sentences) == 1, "one clear sentence (the rest of stderr is log lines)"

    again = run_worker(["backup"], s3_env, cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert len(again.event("job.succeeded")["uploaded"]) == 2
    assert len([k for k in keys(s3_client, bucket) if k.endswith(".json")]) == 2


def test_a_flaky_endpoint_is_retried_and_the_backup_counts_as_off_site(tmp_path: Path, s3_env, flaky_proxy, s3_client, bucket) -> None:
    flaky_proxy.fail_first = 3
    result = run_worker(["backup"], {**s3_env, "S3_ENDPOINT_URL": flaky_proxy.url}, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert len(keys(s3_client, bucket)) == 2


def test_a_backup_damaged_in_the_bucket_is_refused_and_fallback_restores_the_previous_one(tmp_path: Path, s3_env, s3_client, bucket) -> None:
    ids = []
    for _ in range(2):
        result = run_worker(["backup"], s3_env, cwd=tmp_path)
        assert result.code == 0, result.stderr
        ids.append(result.event("job.succeeded")["artifact"])
    newest = f"prod/app/{ids[1]}"
    body = bytearray(s3_client.get_object(Bucket=bucket, Key=newest)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3_client.put_object(Bucket=bucket, Key=newest, Body=bytes(body))

    verify = run_worker(["verify", "--remote", "--latest"], s3_env, cwd=tmp_path)
    assert verify.code == 1 and "SHA-256" in verify.stderr
    target = tmp_path / "restored.db"
    refused = run_worker(["restore", "--from-s3", "--latest", "--to", str(target)], s3_env, cwd=tmp_path)
    assert refused.code == 1 and "--fallback" in refused.stderr and not target.exists()
    fallen = run_worker(["restore", "--from-s3", "--latest", "--fallback", "--to", str(target)], s3_env, cwd=tmp_path)
    assert fallen.code == 0, fallen.stderr
    assert fallen.event("job.succeeded")["backup"] == ids[0].removesuffix(".zst")
    assert target.exists()


def test_prune_dry_run_shows_the_plan_for_both_sides(tmp_path: Path, s3_env) -> None:
    assert run_worker(["backup"], s3_env, cwd=tmp_path).code == 0
    plan = run_worker(["prune", "--dry-run"], {**s3_env, "S3_RETENTION_DAYS": "30"}, cwd=tmp_path)
    assert plan.code == 0
    assert "local: keep 1, delete 0" in plan.stdout and "s3: keep 1, delete 0" in plan.stdout


def test_an_s3_client_that_cannot_be_built_still_leaves_a_local_backup_and_fails_at_upload(tmp_path: Path, s3_env) -> None:
    result = run_worker(["backup"], {**s3_env, "AWS_PROFILE": "no-such-profile"}, cwd=tmp_path)
    assert result.code == 1
    assert result.event("job.failed")["stage"] == "upload"
    assert "no-such-profile" in result.stderr and "AWS_PROFILE" in result.stderr
    assert len(list((tmp_path / "backups").glob("*.sqlite.zst.json"))) == 1


def test_a_failed_download_in_restore_from_s3_reports_the_download_stage(tmp_path: Path, s3_env, flaky_proxy) -> None:
    assert run_worker(["backup"], s3_env, cwd=tmp_path).code == 0
    flaky_proxy.fail, flaky_proxy.fail_status, flaky_proxy.fail_code = 100, 403, "AccessDenied"
    flaky_proxy.fail_methods, flaky_proxy.fail_suffix = {"GET"}, ".sqlite.zst"  # the artifact, not the listing or manifest
    target = tmp_path / "restored.db"
    failed = run_worker(["restore", "--from-s3", "--latest", "--to", str(target)],
                        {**s3_env, "S3_ENDPOINT_URL": flaky_proxy.url}, cwd=tmp_path)
    assert failed.code == 1
    outcome = failed.event("job.failed")
    assert outcome["stage"] == "download"
    assert "access to s3://" in outcome["reason"] and "AccessDenied" in outcome["reason"]
    assert not target.exists() and SECRET not in failed.stdout + failed.stderr


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_botocore_s_own_endpoint_variables_get_the_s3_compatible_client(tmp_path: Path, s3_env, flaky_proxy, s3_client,
                                                                      bucket, variable: str) -> None:
    env = {key: value for key, value in s3_env.items() if key != "S3_ENDPOINT_URL"}
    result = run_worker(["backup"], {**env, variable: flaky_proxy.url}, cwd=tmp_path)
    assert result.code == 0, result.stderr
    assert len(keys(s3_client, bucket)) == 2
    puts = [headers for request, headers in zip(flaky_proxy.requests, flaky_proxy.headers) if request.startswith("PUT ")]
    assert puts and all(request.split()[1].split("?")[0].split("/")[1] == bucket for request in flaky_proxy.requests)  # path-style
    # Checksums only where an operation requires them (over HTTPS botocore's default sends them as aws-chunked
    # trailers, which Ceph answers with HTTP 411; over HTTP as headers, which is what this sees).
    assert not [name for headers in puts for name in headers
                if name.startswith(("x-amz-checksum-", "x-amz-sdk-checksum", "x-amz-trailer", "x-amz-decoded-content"))
                or "aws-chunked" in headers.get("content-encoding", "")]


def test_an_endpoint_with_a_bucket_in_its_path_is_a_configuration_error(tmp_path: Path, s3_env) -> None:
    result = run_worker(["backup"], {**s3_env, "S3_ENDPOINT_URL": "http://127.0.0.1:8333/backups"}, cwd=tmp_path)
    assert result.code == 2
    assert "S3_ENDPOINT_URL='http://127.0.0.1:8333/backups' has the path '/backups'" in result.stderr
    assert "put the bucket name in S3_BUCKET" in result.stderr
    assert not (tmp_path / "backups").exists() or not list((tmp_path / "backups").glob("*.zst"))
