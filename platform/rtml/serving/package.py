"""Package the production model for ``bentoml build``: import the MLflow version holding the
``production`` alias into the BentoML model store (``bentoml.mlflow.import_model``: the MLflow model
folder as logged, so the bento predicts exactly what the registry's version predicts), tagged
``<model name>:v<mlflow version>`` with the version's tags as metadata.

Only a version the scorer would serve is packaged: approved (``registry.check_approved``) and loading
safely as skops with the project's trusted types (``rtml.training.loading``, checked on the imported
copy); otherwise it exits with the reason and leaves nothing in the model store.

    tag=$(python -m rtml.serving.package)     # prints the BentoML model tag, e.g. fraud-detector:v3
    RTML_SERVING_BENTO_MODEL=$tag bentoml build -f platform/rtml/serving/bentofile.yaml platform

``rtml.serving.service`` declares ``RTML_SERVING_BENTO_MODEL`` (default ``<model name>:latest``, the newest
import — not necessarily production after a rollback, hence the explicit tag) as the bento's model.

Uses RTML_MLFLOW_TRACKING_URI, RTML_MODEL_NAME, RTML_SERVING_MODEL_ALIAS.
"""

from __future__ import annotations

import sys

import bentoml

from rtml.config import get_settings
from rtml.serving.scoring import MLFLOW_MODEL_FOLDER
from rtml.training.loading import ModelRefused, load_pipeline
from rtml.training.model_registry import check_approved, client_for, version_with_alias


def package(tracking_uri: str, name: str, alias: str = "production") -> bentoml.Model:
    client = client_for(tracking_uri)
    version = version_with_alias(client, alias, name)
    if version is None:
        raise SystemExit(f"{name} has no version with the alias {alias!r}: promote one first (rtml promote)")
    tag = f"{name}:v{version.version}"
    try:
        check_approved(dict(version.tags), f"{name} v{version.version}")
        try:
            model = bentoml.models.get(tag)  # already packaged
        except bentoml.exceptions.NotFound:
            model = bentoml.mlflow.import_model(  # copies the files; loads nothing
                tag,
                f"models:/{name}/{version.version}",
                labels={"mlflow_model": name, "mlflow_version": str(version.version), "alias": alias},
                metadata={
                    "tags": dict(version.tags),
                    "run_id": version.run_id or "",
                    "tracking_uri": tracking_uri,
                },
            )
        try:
            load_pipeline(model.path_of(MLFLOW_MODEL_FOLDER))
        except ModelRefused:
            bentoml.models.delete(tag)
            raise
    except ModelRefused as exc:
        raise SystemExit(f"not packaged ({exc.reason}): {exc}") from exc
    return model


def main() -> None:
    settings = get_settings()
    if not settings.training.mlflow_tracking_uri:
        sys.exit("RTML_MLFLOW_TRACKING_URI is not set (start the stack: rtml up)")
    model = package(
        settings.training.mlflow_tracking_uri, settings.training.model_name, settings.serving.model_alias
    )
    print(model.tag)


if __name__ == "__main__":
    main()
