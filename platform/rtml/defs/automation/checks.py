"""Freshness checks: how old ``fraud_model``, ``transactions_raw`` and ``online_features`` may get.

Each check passes while the asset's latest materialization is younger than its maximum age (settings
``model_max_age_days``, ``transactions_max_lag_hours``, ``online_features_max_age_hours``). They run in
every run that materializes the asset (a job selecting an asset also runs its checks), and in between
``freshness_checks_sensor`` evaluates them whenever one could have turned stale. The sensors in
``sensors.py`` react to their failures: a stale model is retrained, stale data notifies.

Checks rather than ``FreshnessPolicy`` objects (which Dagster 1.13 prefers): a policy sits on the asset's
own definition (another domain's code), and a check evaluation is a stored record with an id, which
makes "react once per failure" exact.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

import dagster as dg

from rtml.config import AutomationSettings, get_settings
from rtml.defs.automation.tags import TRIGGER_TAG

FRESHNESS_CHECK = "freshness_check"  # the name Dagster's factory gives every freshness check
MODEL_FRESHNESS = dg.AssetCheckKey(dg.AssetKey("fraud_model"), FRESHNESS_CHECK)
DATA_FRESHNESS = (
    dg.AssetCheckKey(dg.AssetKey("transactions_raw"), FRESHNESS_CHECK),
    dg.AssetCheckKey(dg.AssetKey("online_features"), FRESHNESS_CHECK),
)


def freshness_checks(automation: AutomationSettings) -> list[dg.AssetChecksDefinition]:
    """The three freshness checks, their maximum ages from ``automation``."""
    ages = {
        "fraud_model": timedelta(days=automation.model_max_age_days),
        "transactions_raw": timedelta(hours=automation.transactions_max_lag_hours),
        "online_features": timedelta(hours=automation.online_features_max_age_hours),
    }
    with warnings.catch_warnings():
        # "superseded" by FreshnessPolicy (see the module docstring for why checks are used)
        warnings.simplefilter("ignore")
        return [
            check
            for asset, age in ages.items()
            for check in dg.build_last_update_freshness_checks(assets=[asset], lower_bound_delta=age)
        ]


def freshness_checks_sensor(checks: list[dg.AssetChecksDefinition]) -> dg.SensorDefinition:
    """Launches a run of a check only when it could have changed: never evaluated yet, or passed but past
    its "fresh until" time. A failed check waits for the next materialization, which runs it again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dg.build_sensor_for_freshness_checks(
            freshness_checks=checks,
            minimum_interval_seconds=300,
            default_status=dg.DefaultSensorStatus.RUNNING,
            tags={TRIGGER_TAG: "freshness_checks_sensor"},
        )


@dg.definitions
def defs() -> dg.Definitions:
    checks = freshness_checks(get_settings().automation)
    return dg.Definitions(asset_checks=checks, sensors=[freshness_checks_sensor(checks)])
