"""The DVC pipeline (``dvc.yaml``: snapshot → train → evaluate) reproduced with the real ``dvc``: a fresh
checkout's ``dvc repro`` rebuilds exactly the committed ``dvc.lock`` — every dependency and output hash —
under a faked clock a year before the pinned world (``faketime``) and with misleading ``RTML_*``
variables exported, so it depends on neither the day nor the developer's environment; ``dvc push`` /
``dvc pull`` round-trip through the local remote. Plus the byte-stable skops file the train stage writes.

When a change to a stage's code or to params.yaml makes the first test fail, regenerate the lock:
``source .venv/bin/activate && dvc repro`` and commit ``dvc.lock`` (and ``data/metrics.json``) with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
import yaml

PROJECT = Path(__file__).resolve().parents[1]
FAKE_TODAY = "2025-06-01 08:00:00"
"""Long before the pinned world (params.yaml): a stage that measured "in the future" against the clock
would quarantine every row, and one that took "labels known now" would find none."""
AMBIENT = {
    # what a developer may have exported: none of it may reach the pipeline's data
    "RTML_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/not_the_pipelines_database",
    "RTML_SIM_SEED": "99",
    "RTML_SIM_DIRTY_SHARE": "0.2",
    "RTML_SIM_DRIFT_SCENARIO": "amount_inflation",
    "RTML_MAX_FUTURE_SKEW_SECONDS": "0",
}


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's tracked files as a fresh clone has them (uncommitted edits included: the stages run
    this checkout's code, from its virtual environment), in a git repository of their own."""
    repo = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = PROJECT / name
        if source.is_file():  # a file deleted in the working tree is not in a fresh commit either
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def dvc(repo: Path, *args: str, clock: str | None = None) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)  # the stages run `python` from this environment
    env = {**os.environ, **AMBIENT, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = [f"{bin_dir}/dvc", *args]
    if clock is not None:
        command = ["faketime", clock, *command]
    proc = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_params_pin_the_world_and_no_stage_reads_now() -> None:
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    world = params["world"]
    start, end, as_of = (datetime.fromisoformat(world[key]) for key in ("start", "end", "labels_as_of"))
    assert all(ts.utcoffset() is not None for ts in (start, end, as_of)), world  # explicit UTC instants
    assert start < end <= as_of
    pipeline = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    snapshot_cmd = " ".join(pipeline["stages"]["snapshot"]["cmd"].split())
    for key in ("start", "end", "labels_as_of", "seed", "customers", "transactions_per_day"):
        assert f"${{world.{key}}}" in snapshot_cmd, key
    for stage in pipeline["stages"].values():
        assert not {"now", "today", "$(date"} & set(stage["cmd"].lower().split()), stage["cmd"]


def test_fresh_checkout_reproduces_the_committed_lock_on_another_day(checkout: Path) -> None:
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed (Debian: apt-get install faketime)")
    committed = (checkout / "dvc.lock").read_text()
    dvc(checkout, "repro", clock=FAKE_TODAY)
    assert (checkout / "dvc.lock").read_text() == committed, (
        "dvc repro rebuilt other hashes than the committed dvc.lock: regenerate it (`dvc repro`) and commit"
    )
    status = dvc(checkout, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout

    lock = yaml.safe_load(committed)
    [snapshot_out] = lock["stages"]["snapshot"]["outs"]
    snapshot_file = checkout / "data" / "training_set.parquet"
    assert snapshot_out["md5"] == hashlib.md5(snapshot_file.read_bytes()).hexdigest()
    metrics = json.loads((checkout / "data" / "metrics.json").read_text())
    assert metrics == json.loads((PROJECT / "data" / "metrics.json").read_text())  # as committed
    assert metrics["test_roc_auc"] > 0.85, metrics
    roc = pd.read_csv(checkout / "data" / "plots" / "roc_test.csv")
    assert list(roc.columns) == ["false_positive_rate", "true_positive_rate"] and len(roc) > 10


def test_push_and_pull_through_the_local_remote(checkout: Path) -> None:
    if not (checkout / "data" / "training_set.parquet").exists():
        dvc(checkout, "repro")
    lock = yaml.safe_load((checkout / "dvc.lock").read_text())
    md5 = lock["stages"]["snapshot"]["outs"][0]["md5"]
    dvc(checkout, "push")
    remote = checkout / ".rtml" / "dvc-remote"  # .dvc/config: ../.rtml/dvc-remote
    assert (remote / "files" / "md5" / md5[:2] / md5[2:]).exists()

    snapshot_file = checkout / "data" / "training_set.parquet"
    snapshot_file.unlink()
    shutil.rmtree(checkout / ".rtml" / "dvc-cache")
    dvc(checkout, "pull")
    assert hashlib.md5(snapshot_file.read_bytes()).hexdigest() == md5
    assert "up to date" in dvc(checkout, "status").stdout


def test_canonical_skops_is_byte_stable_and_loads(tmp_path: Path) -> None:
    from rtml.training.dataset import FeatureSpec
    from rtml.training.loading import load_skops
    from rtml.training.model import build_pipeline
    from rtml.training.reproducible import canonical_skops

    rng = np.random.default_rng(0)
    spec = FeatureSpec(numeric=["a", "b"], categorical=["channel"])
    X = pd.DataFrame(
        {"channel": rng.choice(["pos", "online"], 400), "a": rng.normal(size=400), "b": rng.normal(size=400)}
    )
    y = (X["a"] + rng.normal(size=400) > 1).astype(int)
    first, second = (build_pipeline(spec, max_iter=5).fit(X, y) for _ in range(2))
    raw = skops.io.dumps(first), skops.io.dumps(second)
    assert raw[0] != raw[1]  # skops alone: memory ids (and times) differ between equal models
    canonical = canonical_skops(raw[0]), canonical_skops(raw[1])
    assert canonical[0] == canonical[1]
    assert canonical_skops(canonical[0]) == canonical[0]

    (tmp_path / "model.skops").write_bytes(canonical[0])
    loaded = load_skops(tmp_path / "model.skops")  # the project's trusted types, as the stages load it
    np.testing.assert_array_equal(loaded.predict_proba(X), first.predict_proba(X))
