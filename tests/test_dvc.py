"""The DVC pipeline (``dvc.yaml``: snapshot → train → evaluate) reproduced with the real ``dvc`` on a
small window of the training database, in a scratch copy of the project's DVC files: ``dvc repro``
runs, ``dvc status`` is clean after it, the snapshot's hash in ``dvc.lock`` is the one the Dagster
training asset records for the same window, and ``dvc push`` / ``dvc pull`` round-trip through the
local remote under the data directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from rtml.config import Settings
from rtml.training.tracking import take_snapshot

PROJECT = Path(__file__).resolve().parents[1]
WINDOW = (datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 9, 15, tzinfo=UTC))


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dvc.yaml, .dvc/config and every file a stage depends on, in a git repo of their own, with
    params.yaml narrowed to a two-week window."""
    repo = tmp_path_factory.mktemp("dvc-repo")
    pipeline = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    outputs = {out for stage in pipeline["stages"].values() for out in stage.get("outs", [])}
    deps = {dep for stage in pipeline["stages"].values() for dep in stage.get("deps", [])} - outputs
    for name in [*deps, "dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore"]:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / name, repo / name)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["snapshot"] = {"start": WINDOW[0].isoformat(), "end": WINDOW[1].isoformat()}
    params["train"]["max_iter"] = 100
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def dvc(repo: Path, *args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)  # the stages run `python` from this environment
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RTML_DATABASE_URL": database_url}
    proc = subprocess.run(
        [f"{bin_dir}/dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_repro_then_status_is_clean_and_hashes_match_dagster(
    dvc_repo: Path, training_db: str, training_settings: Settings
) -> None:
    dvc(dvc_repo, "repro", database_url=training_db)
    status = dvc(dvc_repo, "status", database_url=training_db)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout

    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    [snapshot_out] = lock["stages"]["snapshot"]["outs"]
    snapshot_file = dvc_repo / "data" / "training_set.parquet"
    assert snapshot_out["md5"] == hashlib.md5(snapshot_file.read_bytes()).hexdigest()
    # the Dagster asset exports the same window with the same code: the same DVC hash
    assert take_snapshot(training_db, training_settings, *WINDOW).md5 == snapshot_out["md5"]

    metrics = json.loads((dvc_repo / "data" / "metrics.json").read_text())
    assert metrics["test_roc_auc"] > 0.85, metrics
    assert (dvc_repo / "data" / "plots" / "roc_test.png").stat().st_size > 0


def test_push_and_pull_through_the_local_remote(dvc_repo: Path, training_db: str) -> None:
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    md5 = lock["stages"]["snapshot"]["outs"][0]["md5"]
    dvc(dvc_repo, "push", database_url=training_db)
    remote = dvc_repo / ".rtml" / "dvc-remote"  # .dvc/config: ../.rtml/dvc-remote
    assert (remote / "files" / "md5" / md5[:2] / md5[2:]).exists()

    snapshot_file = dvc_repo / "data" / "training_set.parquet"
    snapshot_file.unlink()
    shutil.rmtree(dvc_repo / ".rtml" / "dvc-cache")
    dvc(dvc_repo, "pull", database_url=training_db)
    assert hashlib.md5(snapshot_file.read_bytes()).hexdigest() == md5
    assert "up to date" in dvc(dvc_repo, "status", database_url=training_db).stdout
