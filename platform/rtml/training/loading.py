"""Load a model safely: the skops file of MLflow's sklearn flavour, with the project's own trusted types.

``mlflow.sklearn.load_model`` trusts the artifact: its ``MLmodel`` file chooses the format (``pickle``
and ``cloudpickle`` run arbitrary code when loaded), lists the skops types to trust (a crafted model
whitelists what it needs) and names ``code/`` folders that go on ``sys.path``. Here the artifact decides
nothing: ``load_pipeline`` reads only the sklearn flavour's skops file, trusts only
``model.TRUSTED_TYPES`` and never looks at the artifact's list or code paths. Anything else is
``ModelRefused`` with a reason (the scoring service counts refusals by it).

Importing this module switches MLflow's own deserialising loaders off in the process
(``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``): every process that loads models does so through here
(the scorer, the evaluation gate, drift, DVC's stages, the bento packaging), so an ``mlflow.*.load_model``
call that slipped in fails instead of running an artifact's code.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from rtml.training.model import TRUSTED_TYPES

log = logging.getLogger(__name__)

os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"

SKOPS = "skops"


class ModelRefused(RuntimeError):
    """A model version that must not be served or compared; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


REASONS = ("format", "untrusted_types", "invalid", "not_gated", "gate_rejected", "not_approved")
"""``format``: not an sklearn model saved as skops; ``untrusted_types``: its skops file needs a type
outside ``TRUSTED_TYPES``; ``invalid``: unreadable, not a Pipeline, or no decision thresholds; the
others: registry tags missing (``registry.check_approved``)."""


def load_pipeline(source: str | Path) -> Any:
    """The sklearn Pipeline of an MLflow model: a local model folder, or a URI (``models:/name/3``,
    ``runs:/...``) whose artifacts are downloaded to a temporary folder first."""
    if Path(source).is_dir():
        return _load_model_folder(Path(source))
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="rtml-model-") as tmp:
        try:
            folder = mlflow.artifacts.download_artifacts(artifact_uri=str(source), dst_path=tmp)
        except Exception as exc:
            raise ModelRefused("invalid", f"cannot download the model {source}: {exc}") from exc
        return _load_model_folder(Path(folder), label=str(source))


def _load_model_folder(folder: Path, label: str | None = None) -> Any:
    from mlflow.models import Model

    label = label or str(folder)
    try:
        flavors = Model.load(folder).flavors
    except Exception as exc:
        raise ModelRefused("invalid", f"{label} is not an MLflow model (no readable MLmodel): {exc}") from exc
    conf = flavors.get("sklearn")
    if conf is None:
        raise ModelRefused("format", f"{label} has no sklearn flavour (flavours: {sorted(flavors)})")
    serialization = conf.get("serialization_format", "pickle")  # MLflow's default before skops
    if serialization != SKOPS:
        raise ModelRefused(
            "format",
            f"{label} is saved as {serialization!r}, which runs code when loaded; only skops models are "
            "loaded: log it with mlflow.sklearn.log_model(..., serialization_format='skops') "
            "(rtml.training.tracking does)",
        )
    if conf.get("code"):
        log.warning("%s carries code paths (%s): ignored, never imported", label, conf["code"])
    file = (folder / str(conf.get("pickled_model", ""))).resolve()
    if not file.is_file() or not file.is_relative_to(folder.resolve()):
        raise ModelRefused("invalid", f"{label}: the sklearn flavour's model file is not in the model folder")
    return load_skops(file, label)


def load_skops(file: Path, label: str | None = None) -> Any:
    """A skops file holding a Pipeline, loaded with ``TRUSTED_TYPES`` only."""
    import skops.io
    from sklearn.pipeline import Pipeline
    from skops.io.exceptions import UntrustedTypesFoundException

    label = label or str(file)
    try:
        loaded = skops.io.load(file, trusted=TRUSTED_TYPES)
    except UntrustedTypesFoundException as exc:
        raise ModelRefused(
            "untrusted_types",
            f"{label} needs types outside the project's trusted list (rtml.training.model.TRUSTED_TYPES): "
            f"{exc}. Review them; trust a type by adding it there, never from the artifact",
        ) from exc
    except Exception as exc:
        raise ModelRefused("invalid", f"{label} is not a readable skops file: {exc}") from exc
    if not isinstance(loaded, Pipeline):
        raise ModelRefused("invalid", f"{label} holds a {type(loaded).__name__}, not an sklearn Pipeline")
    return loaded
