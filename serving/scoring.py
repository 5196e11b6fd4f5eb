"""The scoring logic behind ``FraudScorer`` (service.py), kept free of BentoML's service machinery:

* ``ServedModel``: a loaded model version (sklearn Pipeline, version, decision thresholds) — swapped as
  one reference, so a request always scores with one consistent model;
* ``load_version`` / ``load_from_bento``: the production version from MLflow, or the copy packaged
  in the bento (``bentoml.mlflow.import_model`` of the same MLflow model, see ``package.py``) — only a
  version that passed the evaluation gate and a person's approval (``registry.check_approved``), only
  as skops with the project's trusted types (``rtml.training.loading``); otherwise ``ModelRefused``;
* ``lookup``: the online-feature read with the fail-open / fail-closed policy;
* ``score_rows``: request-time features (``rtml.features.request_features``) + the model, compiled
  for latency (``rtml.training.compiled``: the same probabilities as the sklearn Pipeline, checked at
  load; the Pipeline itself when it cannot be compiled exactly).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rtml.features.request_features import model_row
from rtml.training.compiled import CompiledModel, NotCompilable, compile_pipeline
from rtml.training.loading import ModelRefused, load_pipeline
from rtml.training.registry import check_approved, client_for, version_with_alias
from rtml.training.train import score

log = logging.getLogger("rtml.serving")

MLFLOW_MODEL_FOLDER = "mlflow_model"  # where bentoml.mlflow.import_model keeps the MLflow model


class FeatureStoreUnavailable(RuntimeError):
    """Redis is unreachable and the service fails closed."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    pipeline: Any
    threshold_review: float
    threshold_decline: float
    source: str
    """``registry`` (loaded from MLflow) or ``bento:<tag>`` (the copy packaged in the bento)."""
    tags: dict[str, str] = field(default_factory=dict)
    compiled: CompiledModel | None = None

    @property
    def path(self) -> str:
        """How it scores: ``compiled`` (treelite) or ``sklearn`` (the Pipeline: it could not be compiled)."""
        return "sklearn" if self.compiled is None else "compiled"

    def decide(self, probability: float) -> str:
        if probability >= self.threshold_decline:
            return "decline"
        if probability >= self.threshold_review:
            return "review"
        return "approve"


def thresholds_from_tags(tags: dict[str, str], label: str) -> tuple[float, float]:
    try:
        return float(tags["threshold_review"]), float(tags["threshold_decline"])
    except (KeyError, ValueError) as exc:
        raise ModelRefused(
            "invalid", f"{label} has no valid threshold_review/threshold_decline tags: cannot decide"
        ) from exc


def load_version(tracking_uri: str, name: str, version: str, tags: dict[str, str]) -> ServedModel:
    """``ModelRefused`` unless the version is approved, has thresholds and loads safely (the tags are
    checked first: they cost no download)."""
    label = f"{name} v{version}"
    check_approved(tags, label)
    review, decline = thresholds_from_tags(tags, label)
    client_for(tracking_uri)  # models:/ URIs resolve against the global tracking URI
    pipeline = load_pipeline(f"models:/{name}/{version}")
    return ServedModel(name, version, pipeline, review, decline, "registry", tags, compiled_or_none(pipeline))


def compiled_or_none(pipeline: Any) -> CompiledModel | None:
    try:
        return compile_pipeline(pipeline)
    except NotCompilable as exc:
        log.warning("model not compiled, scoring with the sklearn Pipeline (slower): %s", exc)
        return None


def production_version(tracking_uri: str, name: str, alias: str) -> tuple[str, dict[str, str]] | None:
    """(version, tags) of the version holding ``alias`` — one cheap registry call (the poller's)."""
    version = version_with_alias(client_for(tracking_uri), alias, name)
    return None if version is None else (str(version.version), dict(version.tags))


def load_from_bento(stored: Any) -> ServedModel:
    """A model imported by ``package.py`` (a ``bentoml.Model``): the MLflow model folder inside it, held
    to the same rules as the registry's versions (the tags are the registry's, copied at packaging)."""
    info = stored.info
    tags = {str(k): str(v) for k, v in (info.metadata or {}).get("tags", {}).items()}
    name = str(info.labels.get("mlflow_model", stored.tag.name))
    version = str(info.labels["mlflow_version"])
    label = f"{name} v{version} (bento model {stored.tag})"
    check_approved(tags, label)
    review, decline = thresholds_from_tags(tags, label)
    pipeline = load_pipeline(stored.path_of(MLFLOW_MODEL_FOLDER))
    return ServedModel(
        name=name,
        version=version,
        pipeline=pipeline,
        threshold_review=review,
        threshold_decline=decline,
        source=f"bento:{stored.tag}",
        tags=tags,
        compiled=compiled_or_none(pipeline),
    )


@dataclass
class Lookup:
    customer: dict[str, Any]
    merchant: dict[str, Any]
    missing: list[str]
    degraded: bool = False


def lookup(
    store: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    fail_open: bool,
) -> list[Lookup]:
    """Online features of (customer, merchant) pairs in one round trip.

    Redis down (connection or timeout error): fail open → every pair gets the defaults of an unknown
    entity and ``degraded=True``; fail closed → ``FeatureStoreUnavailable``. redis-py reconnects on the
    next command, so the service recovers by itself when Redis is back."""
    import redis

    try:
        found = store.read_many(list(pairs))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if not fail_open:
            raise FeatureStoreUnavailable(
                f"online feature store (Redis) unavailable: {type(exc).__name__}; the service fails closed "
                "(RTML_SERVING_FAIL_OPEN=false)"
            ) from exc
        log.warning("online feature store unavailable (%s): scoring with defaults (fail-open)", exc)
        customer, merchant = store.customer_view.defaults(), store.merchant_view.defaults()
        return [Lookup(dict(customer), dict(merchant), ["customer", "merchant"], True) for _ in pairs]
    return [Lookup(f.customer, f.merchant, list(f.missing)) for f in found]


def score_rows(
    model: ServedModel,
    transactions: Sequence[Mapping[str, Any]],
    lookups: Sequence[Lookup],
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> np.ndarray:
    rows = [
        model_row(txn, found.customer, found.merchant, numeric, categorical)
        for txn, found in zip(transactions, lookups, strict=True)
    ]
    if model.compiled is not None:
        return model.compiled.predict(rows)
    frame = pd.DataFrame(rows, columns=[*categorical, *numeric])
    for name in categorical:
        frame[name] = frame[name].astype(object)
    return score(model.pipeline, frame)  # the training code's own scoring function
