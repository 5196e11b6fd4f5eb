"""The shared DVC remote of CI (issue 19): `docker/dvc-remote.sh` points a checkout's DVC at an
S3-compatible URL from the environment, the real `dvc push` sends the data there, and another checkout
`dvc pull`s the same bytes. The object store is moto's S3 server on loopback (the one fake: S3 is outside
the platform); DVC, dvc-s3 and the script are real. `train.yaml` runs the same script and commands."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docker" / "dvc-remote.sh"
BIN = Path(sys.executable).parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "rtml-test", "AWS_SECRET_ACCESS_KEY": "rtml-test-secret"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("moto") / "server.log").open("w")
    server = subprocess.Popen(
        [BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_boto(CREDENTIALS)).create_bucket(
        Bucket="rtml-data"
    )
    yield endpoint
    server.terminate()
    server.wait(10)


def _boto(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
    }


def _checkout(path: Path) -> Path:
    """A git + DVC checkout with the project's own .dvc/config (its local remote the default)."""
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    shutil.copytree(
        ROOT / ".dvc", path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local")
    )
    return path


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AWS_DEFAULT_REGION": "us-east-1",
        **env,
    }
    for name in ("DVC_REMOTE_URL", "DVC_REMOTE_ENDPOINT_URL"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(args, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


def test_ci_pushes_to_and_pulls_from_an_s3_compatible_remote(s3_endpoint: str, tmp_path: Path) -> None:
    remote = {"DVC_REMOTE_URL": "s3://rtml-data/rtml", "DVC_REMOTE_ENDPOINT_URL": s3_endpoint, **CREDENTIALS}
    producer = _checkout(tmp_path / "producer")
    (producer / "data").mkdir()
    payload = os.urandom(100_000)
    (producer / "data" / "snapshot.parquet").write_bytes(payload)
    assert _run(["dvc", "add", "data/snapshot.parquet"], producer).returncode == 0

    configured = _run([str(SCRIPT)], producer, **remote)
    assert configured.returncode == 0, configured.stderr
    assert "s3://rtml-data/rtml" in configured.stdout
    # nothing secret is written, and the shared remote is configured only locally (git-ignored)
    local_config = (producer / ".dvc" / "config.local").read_text()
    assert s3_endpoint in local_config and "rtml-test" not in local_config
    assert "s3://" not in (producer / ".dvc" / "config").read_text()
    pushed = _run(["dvc", "push"], producer, **CREDENTIALS)
    assert pushed.returncode == 0, pushed.stderr

    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", **_boto(CREDENTIALS))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rtml-data", Prefix="rtml/").get("Contents", [])]
    assert len(keys) == 1 and keys[0].startswith("rtml/files/md5/"), keys

    consumer = _checkout(tmp_path / "consumer")
    (consumer / "data").mkdir()
    shutil.copy(producer / "data" / "snapshot.parquet.dvc", consumer / "data")
    assert _run([str(SCRIPT)], consumer, **remote).returncode == 0
    pulled = _run(["dvc", "pull", "--allow-missing"], consumer, **CREDENTIALS)
    assert pulled.returncode == 0, pulled.stderr
    assert (consumer / "data" / "snapshot.parquet").read_bytes() == payload


def test_without_a_remote_url_the_local_remote_stays_and_a_wrong_url_is_refused(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "checkout")
    kept = _run([str(SCRIPT)], checkout)
    assert kept.returncode == 0 and "not set" in kept.stdout
    assert not (checkout / ".dvc" / "config.local").exists()
    refused = _run([str(SCRIPT)], checkout, DVC_REMOTE_URL="https://example.com/bucket")
    assert refused.returncode == 2 and "s3://<bucket>/<path>" in refused.stderr
    assert not (checkout / ".dvc" / "config.local").exists()


def test_train_workflow_pulls_before_repro_and_pushes_only_from_main() -> None:
    steps = yaml.safe_load((ROOT / ".github" / "workflows" / "train.yaml").read_text())["jobs"]["repro"][
        "steps"
    ]
    names = [s.get("name") for s in steps]
    remote, repro, push = (steps[names.index(n)] for n in ("DVC remote", "dvc repro", "dvc push"))
    assert names.index("DVC remote") < names.index("dvc repro") < names.index("dvc push")
    assert "docker/dvc-remote.sh" in remote["run"] and "dvc pull --allow-missing" in remote["run"]
    assert remote["env"]["DVC_REMOTE_URL"] == "${{ vars.DVC_REMOTE_URL }}"
    assert "secrets.DVC_REMOTE_SECRET_ACCESS_KEY" in remote["env"]["AWS_SECRET_ACCESS_KEY"]
    assert (
        "refs/heads/main" in push["if"]
        and "pull_request" in push["if"]
        and push["run"].strip().endswith("dvc push")
    )
    assert "secrets" not in str(repro)  # the pipeline itself sees no credentials
