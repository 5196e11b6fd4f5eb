"""Lineage of a model version: which data (DVC hash of the training-set snapshot, its window), which
feature definitions (dbt manifest hash, feature view versions) and which code (git commit) made it.

Every registered version of ``fraud-detector`` carries these as tags, so a version can be traced back
to a ``dvc.lock`` entry, a dbt docs site and a commit.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rtml.features.feature_registry import FeatureRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TAGS = (
    "dvc_snapshot_md5",
    "snapshot_rows",
    "data_window_start",
    "data_window_end",
    "dbt_manifest_sha256",
    "feature_definitions",
    "git_commit",
    "git_dirty",
    "run_id",
)


@dataclass(frozen=True)
class Lineage:
    snapshot_md5: str
    snapshot_rows: int
    window_start: datetime
    window_end: datetime
    dbt_manifest_sha256: str
    feature_definitions: str
    git_commit: str
    git_dirty: bool

    def as_tags(self, run_id: str) -> dict[str, str]:
        return dict(
            zip(
                TAGS,
                (
                    self.snapshot_md5,
                    str(self.snapshot_rows),
                    self.window_start.isoformat(),
                    self.window_end.isoformat(),
                    self.dbt_manifest_sha256,
                    self.feature_definitions,
                    self.git_commit,
                    str(self.git_dirty).lower(),
                    run_id,
                ),
                strict=True,
            )
        )


def feature_definitions(registry: FeatureRegistry, views: tuple[str, ...]) -> str:
    """``customer_features@1,merchant_features@1``: the versions of the feature views trained on."""
    return ",".join(f"{name}@{registry.view(name).version}" for name in views)


def git_state(root: Path = PROJECT_ROOT) -> tuple[str, bool]:
    """(commit, has uncommitted changes to tracked files). Outside a git checkout (a container image):
    the commit the image was built from, ``RTML_GIT_COMMIT`` (set by ``docker/Dockerfile``), else
    ``unknown``."""
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("RTML_GIT_COMMIT") or "unknown", False
    return commit, dirty


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
    ).stdout.strip()
