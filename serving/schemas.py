"""The scoring API's request and response models: one definition for ``service.py`` (``FraudScorer``)
and the framework-floor service of the benchmarks (``benchmarks/floor_service.py``). No side effects on
import (no settings, no model store)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
TEXT_PATTERN = r"^[A-Za-z0-9 _.,&'()/-]{1,64}$"


def _aware(value: datetime) -> datetime:
    """A naive timestamp is taken as UTC (like the ingest loader)."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+05:00: a 400, not a 500
        raise ValueError(f"timestamp out of range in UTC: {exc}") from exc


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
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR.")]
    timestamp: Annotated[
        datetime,
        AfterValidator(_aware),
        Field(description="When the transaction happened (ISO 8601; without a zone: UTC)."),
    ]
    channel: Literal["pos", "online", "atm"]
    merchant_category: Annotated[
        str | None,
        Field(
            pattern=TEXT_PATTERN,
            description="Optional: the merchant's category (missing → the model's missing value).",
        ),
    ] = None
    country: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z]{2}$",
            description="Optional: ISO 3166 country (missing → the model's missing value).",
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


class BatchScore(BaseModel):
    scores: list[Score]
    model_version: str
