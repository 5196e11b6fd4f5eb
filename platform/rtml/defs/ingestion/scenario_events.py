"""Drift-scenario switches in the Dagster UI: an observation of `transactions_raw` per switch, so the
asset's Events tab shows when the generated data changed (``rtml scenario start|stop`` records them)."""

from __future__ import annotations

from datetime import datetime

import dagster as dg

ASSET = dg.AssetKey("transactions_raw")


def record_switch(
    instance: dg.DagsterInstance, scenario: str, action: str, at: datetime, active: list[str]
) -> None:
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=ASSET,
            description=f"drift scenario {scenario} {action}: rows with a later event time follow it",
            metadata={
                "drift_scenario": scenario,
                "switch": action,
                "switched_at": dg.MetadataValue.timestamp(at),
                "active_scenarios": ", ".join(active) or "none",
            },
        )
    )
