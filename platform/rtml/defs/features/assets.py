"""dbt models as Dagster assets, dbt tests as asset checks.

* Asset keys are the model names (``stg_transactions``, ``customer_features``, ...); groups are the
  model folders (``staging``, ``features``, ``training``). The dbt sources ``raw.transactions`` and
  ``raw.labels`` map to the ingestion assets ``transactions_raw`` and ``labels_raw`` (``meta.dagster``
  in ``models/staging/_sources.yml``), so the models sit downstream of them in the graph.
* Partitions: the incremental models (``stg_transactions``, ``customer_features``,
  ``merchant_features``) share the HOURLY partitions of ``transactions_raw``; a run's partition time
  window (one hour, or a whole range in a single-run backfill) reaches dbt as the environment variables
  ``RTML_DBT_MIN_TS``/``RTML_DBT_MAX_TS`` (not ``--vars``: a new vars value forces dbt to re-parse the
  whole project, the environment keeps partial parsing valid).
  The other models (``stg_labels``, ``*_latest``, ``training_set``) are unpartitioned full rebuilds.
* dbt connects with the env from ``rtml.features.dbt.dbt_env(postgres.database_url())``.
"""

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from dagster_dbt import (
    DagsterDbtTranslator,
    DagsterDbtTranslatorSettings,
    DbtProject,
    dbt_assets,
)

from rtml.defs.dagster_dbt_internals import DbtCliResource, retarget_dbt_invocation, stop_dbt_busy_wait
from rtml.defs.ingestion.partitions import transactions_partitions
from rtml.defs.resources import PostgresResource
from rtml.features.dbt import (
    QUIET_ENV,
    WINDOW_ENV,
    dbt_env,
    dbt_executable,
    ensure_manifest,
    manifest_is_stale,
    project_dir,
    prune_invocations,
    window_env,
)
from rtml.features.dbt_internals import stop_flag_source_stack_walk

for _key, _value in QUIET_ENV.items():  # dbt parse at load time must not phone home either
    os.environ.setdefault(_key, _value)

dbt_project = DbtProject(project_dir=project_dir(), profiles_dir=project_dir())
dbt_project.prepare_if_dev()  # `dagster dev`: re-parse on load
MANIFEST = dbt_project.manifest_path
if not MANIFEST.exists() or manifest_is_stale(MANIFEST):  # a stale one lacks new models and tests
    MANIFEST = ensure_manifest()  # parses, unless another process did meanwhile

PARTITIONED = "config.materialized:incremental"
GROUPS = {"staging": "staging", "features": "features", "training": "training"}


class FeatureTranslator(DagsterDbtTranslator):
    """Model name as asset key, model folder as group; sources honour their ``meta.dagster.asset_key``."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "model":
            return dg.AssetKey(dbt_resource_props["name"])
        return super().get_asset_key(dbt_resource_props)

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        fqn = dbt_resource_props.get("fqn", [])
        if dbt_resource_props["resource_type"] == "model" and len(fqn) > 2:
            return GROUPS.get(fqn[1], fqn[1])
        return super().get_group_name(dbt_resource_props)


stop_dbt_busy_wait()  # dagster-dbt's fetch_column_metadata() would spin a core while dbt runs
stop_flag_source_stack_walk()  # its in-process adapter's flags would walk the stack's source

translator = FeatureTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


def _dbt_build(
    context: AssetExecutionContext,
    dbt: DbtCliResource,
    postgres: PostgresResource,
    window: Mapping[str, str] | None = None,
) -> Iterator[Any]:
    # The dbt subprocess inherits os.environ (DbtCliResource has no env argument): the connection
    # comes from the platform's database URL; the window is set only while the subprocess starts.
    env = dbt_env(postgres.database_url())
    os.environ.update(env)
    for name in WINDOW_ENV.values():
        os.environ.pop(name, None)
    os.environ.update(window or {})
    try:
        # Unit tests check the SQL, not the data: pytest runs them (`dbt build` in test_dbt_features);
        # here they would need every mocked input table to exist (stg_labels before the first labels run).
        invocation = dbt.cli(["build", "--exclude-resource-type", "unit_test"], context=context)
    finally:
        for name in WINDOW_ENV.values():
            os.environ.pop(name, None)
    # the manifest names the database it was parsed against; the catalogue's columns come from this one
    retarget_dbt_invocation(invocation, env["DBT_DBNAME"])
    try:
        yield from invocation.stream().fetch_column_metadata()
    finally:
        # its folder under target/ (relative to the project, unless DBT_TARGET_PATH is absolute)
        folder = Path(invocation.project_dir) / invocation.target_path.parent
        prune_invocations(folder, context.op_execution_context.op.name)


@dbt_assets(
    manifest=MANIFEST,
    project=dbt_project,
    select=PARTITIONED,
    dagster_dbt_translator=translator,
    partitions_def=transactions_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    name="dbt_incremental_features",
)
def dbt_incremental_features(
    context: AssetExecutionContext, dbt: DbtCliResource, postgres: PostgresResource
) -> Iterator[Any]:
    """Incremental models over the run's hourly window (RTML_DBT_MIN_TS/MAX_TS = partition time window)."""
    window = context.partition_time_window
    yield from _dbt_build(context, dbt, postgres, window_env(window.start, window.end))


@dbt_assets(
    manifest=MANIFEST,
    project=dbt_project,
    exclude=PARTITIONED,
    dagster_dbt_translator=translator,
    name="dbt_feature_tables",
)
def dbt_feature_tables(
    context: AssetExecutionContext, dbt: DbtCliResource, postgres: PostgresResource
) -> Iterator[Any]:
    """Full rebuilds: stg_labels, the online *_latest tables and training_set (cut-off: all labels
    known so far; the training job passes its own cut-off through dbt directly)."""
    yield from _dbt_build(context, dbt, postgres)


defs = dg.Definitions(
    assets=[dbt_incremental_features, dbt_feature_tables],
    resources={
        "dbt": DbtCliResource(
            project_dir=str(project_dir()), profiles_dir=str(project_dir()), dbt_executable=dbt_executable()
        )
    },
)
