"""Which packaged model the service declares (``FraudScorer.bento_model``): the one ``rtml.serving.package``
imported into the BentoML model store before ``bentoml build``. Declaring it on the service class makes
``bentoml build`` put it into the bento; a bento then starts from it without the registry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml


def bento_model_tag(model_name: str) -> str:
    """``RTML_SERVING_BENTO_MODEL``; inside a bento the model its ``bento.yaml`` recorded at build time
    (a locally served bento reads the global model store, where ``:latest`` may be a newer import);
    else ``<model name>:latest``."""
    explicit = os.environ.get("RTML_SERVING_BENTO_MODEL")
    if explicit:
        return explicit
    manifest = Path.cwd().parent / "bento.yaml"  # a bento's service runs in <bento>/src
    if manifest.exists():
        import yaml  # type: ignore[import-untyped,unused-ignore]

        recorded = yaml.safe_load(manifest.read_text()) or {}
        entries = list(recorded.get("models") or [])  # BentoML 1.4 records them per service
        for service in recorded.get("services") or []:
            entries += service.get("models") or []
        for entry in entries:
            tag = str(entry.get("tag", "") if isinstance(entry, dict) else entry)
            if tag.split(":", 1)[0] == model_name:
                return tag
    return f"{model_name}:latest"


def bento_model(model_name: str) -> Any:
    """The packaged model as a ``BentoModel`` reference, or None when the model store holds none."""
    tag = bento_model_tag(model_name)
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return None
    return bentoml.models.BentoModel(tag)
