"""Training and the manual promotion step as jobs (the latter is launched from the UI with config)."""

from __future__ import annotations

import dagster as dg

training_job = dg.define_asset_job("training_job", selection=["fraud_model"])
promote_model_job = dg.define_asset_job(
    "promote_model_job",
    selection=["production_model"],
    description="Manual approval: move the `production` alias (action promote, or rollback), recording "
    "approver and reason.",
)
