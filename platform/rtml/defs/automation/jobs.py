"""Jobs the automation launches (the raw-stream jobs, ``training_job`` and ``promote_model_job`` live in their
domains)."""

from __future__ import annotations

import dagster as dg

from rtml.defs.features.assets import dbt_incremental_features
from rtml.defs.ingestion.partitions import transactions_partitions

# One run per hour does the whole chain, so an hour's features and the online store never lag its raw
# data by more than the run: the hour's transactions, the incremental dbt models over the same hour,
# the `*_latest` tables and the speed layer's batch snapshot (full rebuilds) and the push of those to
# Redis. Their asset checks (dbt tests,
# online/offline parity, data freshness) run in the same run.
HOURLY_RAW = dg.AssetKey("transactions_raw")
HOURLY_FEATURES = tuple(sorted(dbt_incremental_features.keys))  # one partition per hour, like the raw data
HOURLY_LATEST = tuple(
    dg.AssetKey(name)
    for name in (
        "customer_features_latest",
        "merchant_features_latest",
        "customer_stream_snapshot",
        "online_features",
    )
)  # unpartitioned: rebuilt whole by every run
hourly_refresh_job = dg.define_asset_job(
    "hourly_refresh_job",
    selection=dg.AssetSelection.assets(HOURLY_RAW, *HOURLY_FEATURES, *HOURLY_LATEST),
    partitions_def=transactions_partitions,
    description="An hour of transactions → its incremental features → the latest-feature tables and the "
    "speed layer's batch snapshot → the online store (Redis). Scheduled hourly; backfill ranges with "
    "`rtml backfill START END --job hourly_refresh_job`.",
)

# Retraining starts from the newest labels: stg_labels and training_set are rebuilt first, then
# fraud_model snapshots the training set, trains, registers, and gates the version (→ `staging`).
retraining_job = dg.define_asset_job(
    "retraining_job",
    selection=dg.AssetSelection.assets("stg_labels", "training_set", "fraud_model"),
    description="Rebuild the training set with the labels known now, then train, register and gate a new "
    "version (evaluation gate → `staging`). Launched daily, and by the drift and model-staleness sensors.",
)

# The drift check runs with its report; its failure is what the drift sensor reacts to.
drift_job = dg.define_asset_job(
    "drift_job",
    selection=dg.AssetSelection.assets("drift_report"),
    description="Drift report (production's training window vs the newest hours) and its check "
    "`drift_within_threshold`; a failure requests the retraining job.",
)

# The staged version against production on the same live requests; on demand too (the asset in the UI).
challenger_job = dg.define_asset_job(
    "challenger_job",
    selection=dg.AssetSelection.assets("challenger_comparison"),
    description="The staged version's shadow scores against production's on the same requests (live "
    "PR AUC, recall at production's decline rate, decision agreement, score distributions): the verdict "
    "`rtml promote` shows.",
)

bento_job = dg.define_asset_job(
    "bento_job",
    selection=dg.AssetSelection.assets("fraud_scorer_bento"),
    description="Build the scoring service's bento around the version holding `production` (launched "
    "after every promotion or rollback).",
)
