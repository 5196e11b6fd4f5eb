"""dagster-dbt's internals that the dbt assets (``rtml.defs.features.assets``) use for lack of a public
API, in one place:

* The wait of dagster-dbt's metadata fetching (:func:`stop_dbt_busy_wait`):
  ``DbtEventIterator.fetch_column_metadata()`` (the dbt assets' column schemas in the catalogue) maps
  the events on a thread pool through ``dagster._core.utils.imap``, whose consumer never blocks while
  no event is ready: it re-checks as fast as it can. For the whole of every ``dbt build`` the run's
  process burned a core, on a 2-core machine the one dbt and PostgreSQL waited for (py-spy: 9 s of CPU
  in one drift-to-retraining test). Still so in Dagster 1.13.29, the newest release.
* The database a dbt run's events name (:func:`retarget_dbt_invocation`):
  dagster-dbt reads the relations of a run's models from the manifest the assets were defined with
  (``DbtCliInvocation.manifest``), which names the database it was parsed against; it fetches their
  column schemas from ``"<that database>".information_schema.columns``, which PostgreSQL refuses on a
  connection to a database of another name ("cross-database references are not implemented"). A copy
  naming the run's database is put in its place.
* The version of the dbt a dbt asset runs (:class:`DbtCliResource`): dagster-dbt asks it by running
  ``dbt --version`` (``DbtCliResource._cli_version``) before every dbt command of every run, a Python
  process that imports dbt to print it (2-3 s here, in the step's critical path). When the executable
  is the ``dbt`` of this interpreter's environment, its version is the installed dbt-core's.

Used here and nowhere else. dagster-dbt is pinned (pyproject.toml); tests/test_private_apis.py fails by
name when a new version changes any of them.
"""

from __future__ import annotations

import importlib.metadata
import queue
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import dagster_dbt
from packaging.version import Version

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["DbtCliResource", "imap_blocking", "retarget_dbt_invocation", "stop_dbt_busy_wait"]


def imap_blocking(executor: Executor, iterable: Iterable[T], func: Callable[[T], R]) -> Iterator[R]:
    """``dagster._core.utils.imap``'s contract (``func`` over ``iterable`` on ``executor``; results in
    order, each as soon as it is done; the feed's exception raised after the results before it) without
    its busy wait: a task feeds the futures into a queue as the items arrive, and the consumer blocks on
    the queue, then on the oldest future."""
    futures: queue.SimpleQueue[Future[R] | None] = queue.SimpleQueue()

    def feed() -> None:
        try:
            for item in iterable:
                futures.put(executor.submit(func, item))
        finally:
            futures.put(None)  # the end, also of a failed feed

    feeder = executor.submit(feed)
    while (future := futures.get()) is not None:
        yield future.result()
    error = feeder.exception()
    if error is not None:
        raise error


def stop_dbt_busy_wait() -> None:
    """dagster-dbt's event mapping (``fetch_column_metadata``, ``fetch_row_counts``) waits on
    :func:`imap_blocking` instead of spinning. Idempotent."""
    from dagster_dbt.core import dbt_event_iterator

    dbt_event_iterator.imap = imap_blocking


def retarget_dbt_invocation(invocation: Any, database: str) -> None:
    """``invocation`` (a ``DbtCliInvocation``) maps its events with a manifest whose models, tests and
    sources are in ``database``, the one its dbt run built: the column schemas and column lineage its
    materializations carry then come from that database, whatever it is called. A no-op when the
    manifest names it already."""
    manifest = invocation.manifest

    def moved(resource: Mapping[str, Any]) -> dict[str, Any]:
        old, relation = resource.get("database"), resource.get("relation_name")
        if old is None or old == database:
            return dict(resource)
        prefix = f'"{old}".'
        if relation and relation.startswith(prefix):
            relation = f'"{database}".{relation.removeprefix(prefix)}'
        return {**resource, "database": database, "relation_name": relation}

    if all(node.get("database") in (database, None) for node in manifest["nodes"].values()):
        return
    invocation.manifest = {
        **manifest,
        "nodes": {uid: moved(node) for uid, node in manifest["nodes"].items()},
        "sources": {uid: moved(source) for uid, source in manifest["sources"].items()},
    }


class DbtCliResource(dagster_dbt.DbtCliResource):
    """dagster-dbt's resource, which knows the version of the environment's own ``dbt`` without running
    ``dbt --version`` before each command; any other executable is still asked."""

    @cached_property
    def _cli_version(self) -> Version:
        if Path(self.dbt_executable) == Path(sys.executable).with_name("dbt"):
            return Version(importlib.metadata.version("dbt-core"))
        return super()._cli_version
