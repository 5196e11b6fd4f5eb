"""The scoring API's request and response models: one definition for ``service.py`` (``FraudScorer``)
and the framework-floor service of the benchmarks (``benchmarks/floor_service.py``). No side effects on
import (no model store; the settings the rules share with ingestion — allowed currencies, future skew,
the oldest timestamp — are read when a request is validated).

The input rules are ingestion's (``rtml.ingest.validation``; the id and category patterns are
``rtml.sources.schema``'s), so the model never scores a value it could not have been trained on: a
timestamp not further in the future than ``max_future_skew_seconds`` nor older than
``min_event_timestamp`` (a request dated 9999 or 1970 would move the live-metrics window), a currency of
``currencies``, a country of two capital letters (lower case is upper-cased, as the training data has
it). A broken rule is a 400 naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from rtml.config import get_settings
from rtml.sources.schema import CATEGORY_PATTERN, ID_PATTERN


def _aware(value: datetime) -> datetime:
    """A naive timestamp is taken as UTC (like the ingest loader); it must lie between
    ``min_event_timestamp`` and now + ``max_future_skew_seconds``."""
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+05:00: a 400, not a 500
        raise ValueError(f"timestamp out of range in UTC: {exc}") from exc
    settings = get_settings()
    skew = settings.ingest.max_future_skew_seconds
    if value > datetime.now(UTC) + timedelta(seconds=skew):
        raise ValueError(f"timestamp lies more than {skew} s in the future (max_future_skew_seconds)")
    if value < settings.ingest.min_event_timestamp:
        raise ValueError(
            f"timestamp is before {settings.ingest.min_event_timestamp.isoformat()} (min_event_timestamp)"
        )
    return value


def _allowed_currency(value: str) -> str:
    allowed = get_settings().ingest.currencies
    if value not in allowed:
        raise ValueError(f"currency {value!r} is not one of {allowed} (currencies)")
    return value


class Transaction(BaseModel):
    """One card transaction to score."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: Annotated[str, Field(pattern=ID_PATTERN, description="Unique id of the transaction.")]
    customer_id: Annotated[str, Field(pattern=ID_PATTERN, description="Card holder id (online features).")]
    merchant_id: Annotated[str, Field(pattern=ID_PATTERN, description="Merchant id (online features).")]
    amount: Annotated[
        # ge, not gt: the OpenAPI 3.0 document BentoML emits needs `minimum` (pydantic renders gt as a
        # numeric `exclusiveMinimum`, which OpenAPI 3.0 / JSON Schema draft 4 reject: Schemathesis fails)
        float,
        Field(ge=0.01, le=1e9, allow_inf_nan=False, description="Amount in `currency`, at least 0.01."),
    ]
    currency: Annotated[
        str,
        AfterValidator(_allowed_currency),
        Field(
            pattern=r"^[A-Z]{3}$", description="ISO 4217 code, one of the platform's `currencies`, e.g. EUR."
        ),
    ]
    timestamp: Annotated[
        datetime,
        AfterValidator(_aware),
        Field(
            description="When the transaction happened (ISO 8601; without a zone: UTC); at most "
            "`max_future_skew_seconds` in the future, not before `min_event_timestamp`."
        ),
    ]
    channel: Literal["pos", "online", "atm"]
    merchant_category: Annotated[
        str | None,
        Field(
            pattern=CATEGORY_PATTERN,
            description="Optional: the merchant's category (missing → the model's missing value).",
        ),
    ] = None
    country: Annotated[
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$"), AfterValidator(str.upper)] | None,
        Field(
            description="Optional: ISO 3166 alpha-2 country, upper-cased (missing → the model's missing "
            "value).",
        ),
    ] = None


class Score(BaseModel):
    transaction_id: str
    fraud_probability: float
    decision: Literal["approve", "review", "decline"]
    model_version: str
    features_missing: list[str]
    degraded: bool
    request_id: str
    # entity → why its features are missing (unknown_entity, view_missing, redis_unavailable): for the
    # service's metrics, not part of the response
    _missing_causes: dict[str, Any] = PrivateAttr(default_factory=dict)
    _speed_layer: str | None = PrivateAttr(default=None)  # the speed layer's answer; None: Redis not read
    # the model input row scored and the views' builds it was read from: for the served-features log and
    # the shadow model (the same row, built once)
    _row: dict[str, Any] = PrivateAttr(default_factory=dict)
    _feature_versions: dict[str, str] = PrivateAttr(default_factory=dict)


class BatchScore(BaseModel):
    scores: list[Score]
    model_version: str
