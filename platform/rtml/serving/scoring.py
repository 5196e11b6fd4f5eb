"""The scoring logic behind ``FraudScorer`` (service.py), kept free of BentoML's service machinery:

* ``ServedModel``: a loaded model version (sklearn Pipeline, version, decision thresholds) — swapped as
  one reference, so a request always scores with one consistent model;
* ``load_version`` / ``load_from_bento``: the production version from MLflow, or the copy packaged
  in the bento (``bentoml.mlflow.import_model`` of the same MLflow model, see ``package.py``) — only a
  version that passed the evaluation gate and a person's approval (``registry.check_approved``), only
  as skops with the project's trusted types (``rtml.training.loading``); otherwise ``ModelRefused``;
* ``lookup``: the online-feature read with the fail-open / fail-closed policy and the circuit breaker
  (``breaker.py``);
* ``model_rows`` + ``predict`` (``score_rows``: both): request-time features
  (``rtml.features.request_features``) into the model's input rows, then the model, compiled for
  latency (``rtml.training.compiled``: the same probabilities as the sklearn Pipeline, checked at load;
  the Pipeline itself when it cannot be compiled exactly). The rows are built once per batch: the
  production model, the shadow model and the served-features log all take the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from rtml.features.request_features import model_row
from rtml.serving.breaker import REDIS_ERRORS
from rtml.training.compiled import CompiledModel, NotCompilable, compile_pipeline
from rtml.training.loading import ModelRefused, load_pipeline
from rtml.training.model_registry import check_approved, check_gated, client_for
from rtml.training.train import score

log = logging.getLogger("rtml.serving")

MLFLOW_MODEL_FOLDER = "mlflow_model"  # where bentoml.mlflow.import_model keeps the MLflow model


class FeatureStoreUnavailable(RuntimeError):
    """The online store cannot answer (Redis unreachable, or a view gone) and the service fails closed.
    ``reason``: the ``rtml_scoring_unavailable_total`` label (``redis`` or ``view_missing``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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


def load_version(
    tracking_uri: str,
    name: str,
    version: str,
    tags: dict[str, str],
    check: Callable[[dict[str, str], str], None] = check_approved,
) -> ServedModel:
    """``ModelRefused`` unless the version passes ``check`` (production: gated and approved; the shadow:
    ``load_shadow``), has thresholds and loads safely (the tags are checked first: they cost no
    download)."""
    label = f"{name} v{version}"
    check(tags, label)
    review, decline = thresholds_from_tags(tags, label)
    client_for(tracking_uri)  # models:/ URIs resolve against the global tracking URI
    pipeline = load_pipeline(f"models:/{name}/{version}")
    return ServedModel(name, version, pipeline, review, decline, "registry", tags, compiled_or_none(pipeline))


def load_shadow(tracking_uri: str, name: str, version: str, tags: dict[str, str]) -> ServedModel:
    """The staged version for shadow scoring: through the gate (``check_gated``; no approval yet: it
    answers nobody), with thresholds, loaded as safely as production (skops, trusted types)."""
    return load_version(tracking_uri, name, version, tags, check=check_gated)


def compiled_or_none(pipeline: Any) -> CompiledModel | None:
    try:
        return compile_pipeline(pipeline)
    except NotCompilable as exc:
        log.warning("model not compiled, scoring with the sklearn Pipeline (slower): %s", exc)
        return None


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
    """Entities scored with defaults: ``"customer"`` and/or ``"merchant"``."""
    degraded: bool = False
    """Defaults because of the store, not the entity: Redis unavailable, or a view's pointer gone."""
    causes: dict[str, str] = field(default_factory=dict)
    """Entity → why it is missing: ``unknown_entity``, ``view_missing`` or ``redis_unavailable``."""
    speed_layer: str = "disabled"
    """The speed layer's answer (``OnlineFeatures.speed_layer``): ``merged`` (the customer's features
    exact at the transaction's time), ``beyond_horizon`` / ``not_exact`` (the batch values), ``disabled``."""
    versions: dict[str, str] = field(default_factory=dict)
    """View → the namespace (build) read (``OnlineFeatures.versions``); empty when Redis was not read."""


ENTITY_VIEWS = (("customer", "customer_features"), ("merchant", "merchant_features"))


def lookup(
    store: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    fail_open: bool,
    breaker: Any = None,
    at: Sequence[tuple[datetime, float]] | None = None,
) -> list[Lookup]:
    """Online features of (customer, merchant) pairs in one round trip; ``at``: each pair's transaction
    (time, amount), for the speed layer's exact customer features (``OnlineStore.read_many``).

    The store cannot answer for these pairs — Redis down, a timeout, the circuit breaker open
    (``breaker.RedisBreaker``: answered without touching Redis), or a view whose pointer is gone
    (Redis restarted or flushed, TTL lapsed: every entity would read as unknown) — fail open → the
    entities concerned get the defaults of an unknown entity and ``degraded=True``; fail closed →
    ``FeatureStoreUnavailable``. An entity the store does not know is not degraded: it is scored with
    the defaults, as in training (cause ``unknown_entity``)."""
    if breaker is not None and breaker.is_open:
        return _unavailable(store, pairs, fail_open, "the circuit breaker is open (Redis did not answer)")
    try:
        found = store.read_many(list(pairs), at=at)
    except REDIS_ERRORS as exc:
        if breaker is not None:
            breaker.trip(exc)
        log.warning("online feature store unavailable (%s)", exc)
        return _unavailable(store, pairs, fail_open, type(exc).__name__)
    versions = found[0].versions if found else {}
    gone = [entity for entity, view in ENTITY_VIEWS if not versions.get(view)]
    if gone and not fail_open:
        views = ", ".join(view for entity, view in ENTITY_VIEWS if entity in gone)
        raise FeatureStoreUnavailable(
            f"online feature store (Redis) has no current version of {views} "
            "(restarted or flushed; the online_features push restores it); the service fails closed "
            "(RTML_SERVING_FAIL_OPEN=false)",
            reason="view_missing",
        )
    return [
        Lookup(
            f.customer,
            f.merchant,
            list(f.missing),
            bool(gone),
            {entity: "view_missing" if entity in gone else "unknown_entity" for entity in f.missing},
            f.speed_layer,
            f.versions,
        )
        for f in found
    ]


def _unavailable(store: Any, pairs: Sequence[tuple[str, str]], fail_open: bool, why: str) -> list[Lookup]:
    if not fail_open:
        raise FeatureStoreUnavailable(
            f"online feature store (Redis) unavailable: {why}; the service fails closed "
            "(RTML_SERVING_FAIL_OPEN=false)",
            reason="redis",
        )
    customer, merchant = store.customer_view.defaults(), store.merchant_view.defaults()
    causes = {"customer": "redis_unavailable", "merchant": "redis_unavailable"}
    return [
        Lookup(dict(customer), dict(merchant), ["customer", "merchant"], True, dict(causes)) for _ in pairs
    ]


def score_rows(
    model: ServedModel,
    transactions: Sequence[Mapping[str, Any]],
    lookups: Sequence[Lookup],
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> np.ndarray:
    return predict(model, model_rows(transactions, lookups, numeric, categorical), numeric, categorical)


def model_rows(
    transactions: Sequence[Mapping[str, Any]],
    lookups: Sequence[Lookup],
    numeric: Sequence[str],
    categorical: Sequence[str],
) -> list[dict[str, Any]]:
    """The model input rows (``model_row``: {column: value}) of a batch: what production scores, the
    shadow model scores and the served-features log keeps — built once."""
    return [
        model_row(txn, found.customer, found.merchant, numeric, categorical)
        for txn, found in zip(transactions, lookups, strict=True)
    ]


def predict(
    model: ServedModel, rows: Sequence[Mapping[str, Any]], numeric: Sequence[str], categorical: Sequence[str]
) -> np.ndarray:
    """Fraud probabilities of ``model_rows`` (not modified)."""
    if model.compiled is not None:
        return model.compiled.predict(rows)
    frame = pd.DataFrame(rows, columns=[*categorical, *numeric])
    for name in categorical:
        frame[name] = frame[name].astype(object)
    return score(model.pipeline, frame)  # the training code's own scoring function
