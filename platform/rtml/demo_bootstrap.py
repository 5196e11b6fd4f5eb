"""The demo's bootstrap: every run that `rtml demo` needs to go from an empty stack to a served model,
executed by ONE process (``python -m rtml.demo_bootstrap``, started by ``rtml demo``).

Each step is a Dagster run recorded in the stack's instance (the Runs page shows them, with their
progress, while they execute), made with the same calls as ``dagster asset materialize``
(``rtml.defs.dagster_internals``): an implicit asset job of the code location, executed here with
``dg.execute_job``. One process loads the code location once and executes the steps in process; nine
``dagster asset materialize`` commands paid 25-50 s of start-up each (a code location load for the run
and one per step).

Runs (partitioned and unpartitioned assets cannot share a run: a run has one partition range):

1. ``labels_raw`` over the days of the window up to the last complete day (labels that have arrived)
2. ``stg_labels`` (merchant_features reads label lag from it)
3. ``transactions_raw`` and the incremental dbt models over the window's hours
4. the dbt tables built on both (the latest-feature tables, the training set), ``online_features``,
   ``fraud_model``
5. ``production_model``: the demo's first model is promoted (approver ``rtml demo``) when none is in
   production yet
6. ``fraud_scorer_bento``
7. ``hourly_refresh_job`` over the hours that were completed while the bootstrap ran (if any): the
   daemon, started after the bootstrap, would not tick for them
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from rtml.config import floor_hour, get_settings
from rtml.defs.automation.tags import RANGE_TAGS
from rtml.defs.dagster_internals import (
    RepositoryPythonOrigin,
    capture_interrupts,
    load_repository,
    pool_storage_connections,
    reconstructable_job,
    repository_origin,
)
from rtml.stack.dagster_processes import CODE_LOCATION
from rtml.stack.local import LocalStack

BOOTSTRAP_TAG = "rtml/bootstrap"  # on every run of the bootstrap: the step's number and name


def hour_of(partition_key: str) -> datetime:
    return datetime.strptime(partition_key, "%Y-%m-%d-%H:%M").replace(tzinfo=UTC)


def completed_since(loaded_until: datetime, now: datetime) -> tuple[str, str] | None:
    """The first and last hourly partition keys of the hours completed from ``loaded_until`` up to
    ``now``; None when there is none."""
    current = floor_hour(now)
    if current <= loaded_until:
        return None
    return f"{loaded_until:%Y-%m-%d-%H:%M}", f"{current - timedelta(hours=1):%Y-%m-%d-%H:%M}"


class BootstrapFailed(RuntimeError):
    pass


class Bootstrap:
    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        self.origin: RepositoryPythonOrigin = repository_origin(CODE_LOCATION)
        self.repository = load_repository(self.origin)
        self.step = 0

    def keys(self, group: str) -> list[str]:
        """The asset keys of one multi-asset (e.g. ``dbt_incremental_features``) of the code location."""
        from rtml.defs.features import assets

        return sorted(key.to_user_string() for key in getattr(assets, group).keys)

    def materialize(
        self,
        select: Sequence[str],
        partition_range: tuple[str, str] | None = None,
        config: dict[str, object] | None = None,
        job_name: str | None = None,
    ) -> None:
        """One run of ``select`` (all sharing one partitions definition), over ``partition_range``; or,
        with ``job_name``, one run of that whole job (``select`` only names it in the output)."""
        self.step += 1
        keys = None
        if job_name is None:
            keys = dg.AssetSelection.assets(*select).resolve(self.repository.asset_graph)
            job = self.repository.get_implicit_job_def_for_assets(keys)
            if job is None:
                raise BootstrapFailed(f"{select}: not one partitions definition, cannot share a run")
            job_name = job.name
        tags = {BOOTSTRAP_TAG: f"{self.step} {select[0]}{' ...' if len(select) > 1 else ''}"}
        if partition_range:
            tags |= dict(zip(RANGE_TAGS, partition_range, strict=True))
        what = f"{', '.join(select)} {'...'.join(partition_range or ())}".strip()
        print(f"[{self.step}] materializing {what}", flush=True)
        began = time.perf_counter()
        result = dg.execute_job(
            reconstructable_job(self.origin, job_name),
            instance=self.instance,
            asset_selection=sorted(keys) if keys is not None else None,
            tags=tags,
            run_config=config or {},
        )
        if not result.success:
            raise BootstrapFailed(f"run {result.run_id} ({what}) did not succeed: see it in the Dagster UI")
        print(f"    done in {time.perf_counter() - began:.0f} s (run {result.run_id})", flush=True)

    def promote_first_model(self) -> None:
        """With no production version yet, the staged one is promoted through the `production_model`
        asset, recorded with approver ``rtml demo`` (later versions wait for a person)."""
        from rtml.training.model_registry import PRODUCTION, STAGING, client_for, version_with_alias

        settings = get_settings()
        client = client_for(LocalStack(settings).info().mlflow_tracking_uri)
        staged = version_with_alias(client, STAGING, settings.training.model_name)
        if version_with_alias(client, PRODUCTION, settings.training.model_name) is not None or staged is None:
            return
        approval = {"version": staged.version, "approver": "rtml demo", "reason": "demo bootstrap"}
        self.materialize(["production_model"], config={"ops": {"production_model": {"config": approval}}})
        print(
            f"{settings.training.model_name} v{staged.version} promoted to production (demo bootstrap)",
            flush=True,
        )

    def catch_up(self, loaded_until: datetime) -> None:
        """The hours completed while the bootstrap ran, through ``hourly_refresh_job`` as its schedule
        would have: the daemon starts after the bootstrap and ticks only from then on, so an hour whose
        tick (at :05) passed meanwhile would be left out. Once this returns, the daemon's next tick
        loads the hour that follows (or, before :05, the last one again)."""
        while hours := completed_since(loaded_until, datetime.now(UTC)):
            self.materialize(
                ["hourly_refresh_job (hours completed meanwhile)"], hours, job_name="hourly_refresh_job"
            )
            loaded_until = hour_of(hours[1]) + timedelta(hours=1)

    def run(self, hours: tuple[str, str], label_days: tuple[str, str]) -> None:
        self.materialize(["labels_raw"], label_days)
        self.materialize(["stg_labels"])
        self.materialize(["transactions_raw", *self.keys("dbt_incremental_features")], hours)
        tables = [key for key in self.keys("dbt_feature_tables") if key != "stg_labels"]
        self.materialize([*tables, "online_features", "fraud_model"])
        self.promote_first_model()
        self.materialize(["fraud_scorer_bento"])
        self.catch_up(hour_of(hours[1]) + timedelta(hours=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("window", help='JSON: {"hours": [first, last], "label_days": [first, last]}')
    window = json.loads(parser.parse_args(argv).window)
    began = time.perf_counter()
    # Ctrl-C (or the demo's stop, which interrupts this worker as Dagster's Terminate does) reaches the
    # step as Dagster's interrupt: the run is recorded as canceled and no further run starts.
    with capture_interrupts(), dg.DagsterInstance.get() as instance:
        pool_storage_connections(instance)  # this one process writes every event of the bootstrap's runs
        try:
            Bootstrap(instance).run(tuple(window["hours"]), tuple(window["label_days"]))
        except BootstrapFailed as exc:
            print(f"bootstrap failed: {exc}", file=sys.stderr, flush=True)
            return 1
    print(f"bootstrap done in {time.perf_counter() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
