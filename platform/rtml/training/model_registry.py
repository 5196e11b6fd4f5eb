"""The model registry workflow on ``fraud-detector``, with MLflow aliases (stages are deprecated):

* **gate** — a new version (the challenger) and the ``production`` version score the challenger's
  held-out test window; the challenger gets ``staging`` only when it beats production on
  ``gate_metric`` by ``gate_min_improvement`` and no guarded metric drops by more than
  ``gate_tolerance`` (without production: when its ROC AUC reaches ``gate_min_roc_auc``). Otherwise it
  is tagged ``rejected`` with the reason and no alias moves.
* **promote** — a person approves a version for ``production``; approver, reason, time and the
  previous production version are recorded as tags of the promoted version (before the alias moves:
  the scoring service refuses a production version without them, ``check_approved``).
* **rollback** — ``production`` moves back to the version that held it before (the
  ``previous_production_version`` tag of the current one); recorded on both versions.

Every action is also kept as a ``last_action`` tag of the registered model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from rtml.config import Settings
from rtml.training import evaluate
from rtml.training.dataset import Split
from rtml.training.loading import ModelRefused, load_pipeline
from rtml.training.train import score

STAGING = "staging"
PRODUCTION = "production"
LOWER_IS_BETTER = frozenset({"brier"})
GATE_METRICS = frozenset({"roc_auc", "pr_auc", "recall_at_1pct_fpr", "brier"})
APPROVAL_TAGS = ("approved_by", "approval_reason", "promoted_at")


class RegistryError(RuntimeError):
    """A registry action that cannot be done; the message says why and what to do instead."""


@dataclass(frozen=True)
class GateDecision:
    version: str
    staged: bool
    reason: str
    challenger: dict[str, float]
    production_version: str | None = None
    production: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: list[str]
    status: str
    """``production``, ``staging``, ``rejected``, ``rolled back`` or ``registered``."""
    created: datetime
    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]


def client_for(tracking_uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(tracking_uri)  # mlflow.<flavor>.load_model resolves models:/ URIs globally
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_with_alias(client: MlflowClient, alias: str, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in (ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), "INVALID_PARAMETER_VALUE"):
            return None
        raise


def production_version(
    tracking_uri: str, name: str, alias: str = PRODUCTION
) -> tuple[str, dict[str, str]] | None:
    """(version, tags) of the version holding ``alias``; None without one. One cheap registry call (the
    scorer's poller makes it every few seconds)."""
    version = version_with_alias(client_for(tracking_uri), alias, name)
    return None if version is None else (str(version.version), dict(version.tags))


# --- the evaluation gate ---------------------------------------------------------------------------
def gate(client: MlflowClient, version: str, holdout: Split, settings: Settings, name: str) -> GateDecision:
    """Compare ``version`` with production on ``holdout``; stage it or tag it rejected."""
    for metric in (settings.training.gate_metric, *settings.training.gate_guarded_metrics):
        if metric not in GATE_METRICS:
            raise RegistryError(f"gate metric {metric!r} is not one of {sorted(GATE_METRICS)}")
    challenger = _holdout_metrics(f"models:/{name}/{version}", holdout)
    production = version_with_alias(client, PRODUCTION, name)
    if production is None:
        floor = settings.training.gate_min_roc_auc
        staged = challenger["roc_auc"] >= floor
        reason = (
            f"no production version; ROC AUC {challenger['roc_auc']:.4f} "
            f"{'reaches' if staged else 'is below'} the floor {floor:.4f}"
        )
        decision = GateDecision(version, staged, reason, challenger)
    else:
        incumbent = _holdout_metrics(f"models:/{name}/{production.version}", holdout)
        decision = _compare(version, challenger, production.version, incumbent, settings)

    tags = {
        "gate": "staged" if decision.staged else "rejected",
        "gate_reason": decision.reason,
        "gate_compared_with": decision.production_version or "none",
        "gate_holdout": f"{holdout.event_ts.min().isoformat()}/{holdout.event_ts.max().isoformat()}",
        **{f"gate_{key}": f"{value:.5f}" for key, value in decision.challenger.items()},
        **{f"gate_production_{key}": f"{value:.5f}" for key, value in decision.production.items()},
    }
    if not decision.staged:
        tags["rejected"] = decision.reason
    _set_tags(client, name, version, tags)
    if decision.staged:
        client.set_registered_model_alias(name, STAGING, version)
    _record(client, name, "gate", version=version, staged=decision.staged, reason=decision.reason)
    return decision


def _holdout_metrics(model_uri: str, holdout: Split) -> dict[str, float]:
    model = load_pipeline(model_uri)
    scores = score(model, holdout.X)
    values = evaluate.metrics(holdout.y, scores)
    return {key: values[key] for key in sorted(GATE_METRICS)}


def _compare(
    version: str,
    challenger: dict[str, float],
    production_version: str,
    production: dict[str, float],
    settings: Settings,
) -> GateDecision:
    def gain(metric: str) -> float:
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        return sign * (challenger[metric] - production[metric])

    problems = []
    primary = settings.training.gate_metric
    if gain(primary) < settings.training.gate_min_improvement:
        problems.append(
            f"{primary} {challenger[primary]:.4f} does not beat production v{production_version}'s "
            f"{production[primary]:.4f} by {settings.training.gate_min_improvement}"
        )
    for metric in settings.training.gate_guarded_metrics:
        if -gain(metric) > settings.training.gate_tolerance:
            problems.append(
                f"{metric} regresses from {production[metric]:.4f} to {challenger[metric]:.4f} "
                f"(tolerance {settings.training.gate_tolerance})"
            )
    if problems:
        reason = "; ".join(problems)
    else:
        reason = (
            f"{primary} {challenger[primary]:.4f} beats production v{production_version}'s "
            f"{production[primary]:.4f}; no guarded metric regresses"
        )
    return GateDecision(version, not problems, reason, challenger, production_version, production)


# --- promotion and rollback ------------------------------------------------------------------------
def promote(
    client: MlflowClient,
    version: str,
    approver: str,
    reason: str,
    name: str,
    *,
    allow_rejected: bool = False,
) -> ModelVersion:
    """Move ``production`` to ``version`` (a manual approval)."""
    if not approver.strip() or not reason.strip():
        raise RegistryError("a promotion needs an approver and a reason (--approver NAME --reason TEXT)")
    candidate = _get_version(client, name, version)
    if "rejected" in candidate.tags and not allow_rejected:
        raise RegistryError(
            f"{name} v{version} was rejected by the evaluation gate ({candidate.tags['rejected']}); "
            "promote a staged version, or override the gate explicitly (--allow-rejected)"
        )
    current = version_with_alias(client, PRODUCTION, name)
    if current is not None and current.version == str(version):
        raise RegistryError(f"{name} v{version} is already in production")
    approval = {
        "approved_by": approver,
        "approval_reason": reason,
        "promoted_at": _now(),
        "previous_production_version": current.version if current else "none",
    }
    if "rejected" in candidate.tags:
        approval["gate_overridden_by"] = approver
    # tags before the alias: a scorer polling in between must not find an unapproved production version
    _set_tags(client, name, str(version), approval)
    client.set_registered_model_alias(name, PRODUCTION, str(version))
    staged = version_with_alias(client, STAGING, name)
    if staged is not None and staged.version == str(version):
        client.delete_registered_model_alias(name, STAGING)  # staging holds candidates awaiting approval
    _record(
        client,
        name,
        "promote",
        version=str(version),
        previous=current.version if current else None,
        by=approver,
        reason=reason,
    )
    return client.get_model_version(name, str(version))


def rollback(client: MlflowClient, approver: str, reason: str, name: str) -> ModelVersion:
    """Move ``production`` back to the version that held it before the current one."""
    current = version_with_alias(client, PRODUCTION, name)
    if current is None:
        raise RegistryError(f"{name} has no production version to roll back")
    previous = current.tags.get("previous_production_version", "none")
    if previous == "none":
        raise RegistryError(
            f"{name} v{current.version} was the first production version: there is nothing to roll back to"
        )
    client.set_registered_model_alias(name, PRODUCTION, previous)
    now = _now()
    _set_tags(
        client,
        name,
        current.version,
        {
            "rolled_back_at": now,
            "rolled_back_by": approver,
            "rollback_reason": reason,
            "rolled_back_to": previous,
        },
    )
    _set_tags(client, name, previous, {"restored_at": now, "restored_from": current.version})
    _record(client, name, "rollback", version=previous, previous=current.version, by=approver, reason=reason)
    return client.get_model_version(name, previous)


def check_approved(tags: dict[str, str], label: str) -> None:
    """``ModelRefused`` unless the version went through the evaluation gate (``check_gated``) and a
    person's approval (``promote``'s tags). What the scoring service and the bento packaging demand of
    the version they serve: an alias moved by hand, bypassing both, is not enough."""
    check_gated(tags, label)
    missing = [tag for tag in APPROVAL_TAGS if not tags.get(tag)]
    if missing:
        raise ModelRefused(
            "not_approved",
            f"{label} has no approval ({', '.join(missing)} missing): the production alias was moved without "
            "`rtml promote VERSION --approver NAME --reason TEXT`",
        )


def check_gated(tags: dict[str, str], label: str) -> None:
    """``ModelRefused`` unless the version went through the evaluation gate (``gate`` tags; a rejected
    version only with an explicit override, ``promote(..., allow_rejected=True)``). What the scoring
    service demands of the staged version it shadow-scores: it answers nobody, so no approval yet."""
    if tags.get("gate") not in ("staged", "rejected") or not tags.get("gate_reason"):
        raise ModelRefused(
            "not_gated",
            f"{label} was never evaluated by the gate (no gate/gate_reason tags): train it through "
            "fraud_model (or registry.gate), then promote it with `rtml promote`",
        )
    if tags["gate"] == "rejected" and not tags.get("gate_overridden_by"):
        raise ModelRefused(
            "gate_rejected",
            f"{label} was rejected by the gate ({tags.get('rejected', tags['gate_reason'])}) and nobody "
            "overrode it: promote a staged version, or `rtml promote --allow-rejected`",
        )


# --- listing ---------------------------------------------------------------------------------------
def versions(client: MlflowClient, name: str) -> list[VersionInfo]:
    """All versions, newest first, with aliases, status and the run's test metrics."""
    found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"])
    out = []
    for found_version in found:
        version = client.get_model_version(name, found_version.version)  # search omits aliases
        run_metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
        out.append(
            VersionInfo(
                version=version.version,
                aliases=sorted(version.aliases),
                status=_status(version),
                created=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
                run_id=version.run_id or "",
                tags=dict(version.tags),
                metrics={k: v for k, v in run_metrics.items() if k.startswith("test_")},
            )
        )
    return out


def _status(version: ModelVersion) -> str:
    for alias in (PRODUCTION, STAGING):
        if alias in version.aliases:
            return alias
    if "rejected" in version.tags:
        return "rejected"
    if "rolled_back_at" in version.tags:
        return "rolled back"
    return "registered"


# --- helpers ---------------------------------------------------------------------------------------
def _get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version!r} (see `rtml models`)") from exc


def _set_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _record(client: MlflowClient, name: str, action: str, **details: object) -> None:
    event = {"action": action, "at": _now(), **{k: v for k, v in details.items() if v is not None}}
    client.set_registered_model_tag(name, "last_action", json.dumps(event, default=str))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
