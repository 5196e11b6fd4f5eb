"""Model versions for the loading and serving tests: a fitted Pipeline logged to the real MLflow registry
in a chosen format (the unsafe ones included, as an attacker or a careless notebook would log them)."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import mlflow
import mlflow.sklearn
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from rtml.training import model_registry
from rtml.training.model import TRUSTED_TYPES
from rtml.training.tracking import TrainingResult


def log_version(
    pipeline: Any,
    name: str,
    tags: dict[str, str],
    *,
    serialization_format: str = "skops",
    skops_trusted_types: list[str] | None = None,
) -> str:
    """Log ``pipeline`` in its own run and register it as a new version of ``name`` with ``tags``."""
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            registered_model_name=name,
            serialization_format=serialization_format,
            skops_trusted_types=TRUSTED_TYPES if skops_trusted_types is None else skops_trusted_types,
            pip_requirements=[],  # inferring them would load the model
        )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version


def with_os_system(pipeline: Pipeline) -> Pipeline:
    """The pipeline behind a step that calls ``os.system`` on its input: a crafted model. Its skops file
    needs the type ``posix.system``, which the artifact's own ``skops_trusted_types`` whitelists."""
    return Pipeline([("payload", FunctionTransformer(os.system)), *pipeline.steps])


UNSAFE_TRUSTED_TYPES = [*TRUSTED_TYPES, "posix.system"]


def gated(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` plus what the evaluation gate writes on a version it stages."""
    return {**tags, "gate": "staged", "gate_reason": "test: staged by hand"}


def promote(client: MlflowClient, name: str, version: str, reason: str) -> None:
    model_registry.promote(client, version, "tests", reason, name=name, allow_rejected=True)


TRAINED_MODEL = "fraud-detector-trained"
"""The registered model of the session's trained version (``conftest.trained_model``); no other test
registers versions of it."""


def copied(client: MlflowClient, trained: TrainingResult, source: str, name: str) -> TrainingResult:
    """``trained`` (a version of ``source``) copied under ``name``: same run, model and tags, no aliases.
    For a module that moves aliases on the version trained once for the session (``trained_model``)."""
    copy = client.copy_model_version(f"models:/{source}/{trained.model_version}", name)
    return replace(trained, model_version=str(copy.version))
