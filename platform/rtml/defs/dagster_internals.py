"""Dagster's internals that rtml uses for lack of a public API, in one place.

* Run monitoring (``rtml.defs.automation.runs``): a run launcher answers the daemon's worker health
  check with ``CheckRunHealthResult`` / ``WorkerStatus``; it asks the code server named in the run's
  ``GRPC_INFO_TAG`` which runs it executes (``DagsterGrpcClient.get_current_runs``), and tells a code
  server that is gone by ``DagsterUserCodeUnreachableError``.
* The demo's bootstrap (``rtml.demo_bootstrap``): the window's runs executed in ONE process, with the
  calls ``dagster asset materialize`` makes (the code location's repository origin from its module name,
  its jobs reconstructed from that origin) and Dagster's ``capture_interrupts``, so that a Ctrl-C
  reaches a step as Dagster's interrupt and the run is recorded as canceled. Nine CLI processes paid
  25-50 s of start-up each (docs/benchmarks.md, "Time to value": the bootstrap).
* The partition tags of a run (``rtml.defs.automation.tags``): a single-run backfill's range is asked for
  with them (the CLI's backfill, the sensors), and Dagster exports no public name for them.
* CI's check of ``docker/dagster.yaml`` (tests/test_cicd.py): validated as Dagster validates it when it
  opens the instance, without opening it (its storage is only reachable inside the compose stack).
* The storage connections of an instance that executes runs itself (the demo's bootstrap,
  :func:`pool_storage_connections`): dagster-postgres opens a new PostgreSQL connection for every event it
  writes (``NullPool``), unless the instance is set up as ``dagster-webserver`` sets up its own
  (``DagsterInstance.optimize_for_webserver``, which swaps in a pooled engine).
* How a code server starts its run workers (``rtml.defs.executor``, :func:`fork_run_workers`): from a
  forkserver that imported the code location once, instead of a fresh interpreter per run; Dagster's
  ``DagsterApiServer`` hard-wires multiprocessing's ``spawn`` (``_mp_ctx``) and offers no setting.

dagster-dbt's are in ``rtml.defs.dagster_dbt_internals``. Used here and nowhere else. dagster is pinned
(pyproject.toml); tests/test_private_apis.py fails by name when a new version changes any of them.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
from dagster._cli.workspace.cli_target import PythonPointerOpts, get_repository_python_origin_from_cli_opts
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.errors import DagsterUserCodeUnreachableError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    GRPC_INFO_TAG,
    PARTITION_NAME_TAG,
)
from dagster._grpc.client import DagsterGrpcClient
from dagster._grpc.server import DagsterApiServer
from dagster._grpc.types import GetCurrentRunsResult
from dagster._utils.hosted_user_process import recon_job_from_origin, recon_repository_from_origin
from dagster._utils.interrupts import capture_interrupts

PARTITION_TAG = PARTITION_NAME_TAG
RANGE_TAGS = (ASSET_PARTITION_RANGE_START_TAG, ASSET_PARTITION_RANGE_END_TAG)

__all__ = [
    "GRPC_INFO_TAG",
    "PARTITION_TAG",
    "RANGE_TAGS",
    "CheckRunHealthResult",
    "DagsterUserCodeUnreachableError",
    "RepositoryPythonOrigin",
    "WorkerStatus",
    "capture_interrupts",
    "current_runs",
    "fork_run_workers",
    "instance_config",
    "load_repository",
    "pool_storage_connections",
    "reconstructable_job",
    "repository_origin",
]


def current_runs(host: str, port: int | None, socket: str | None, use_ssl: bool) -> Sequence[str]:
    """The ids of the runs a code server executes. Raises ``DagsterUserCodeUnreachableError`` (its
    ``__cause__`` the ``grpc.RpcError``) when it does not answer."""
    client = DagsterGrpcClient(port=port, socket=socket, host=host, use_ssl=use_ssl)
    return dg.deserialize_value(client.get_current_runs(), GetCurrentRunsResult).current_runs


def repository_origin(module_name: str) -> RepositoryPythonOrigin:
    """The origin of the code location defined in ``module_name``, as ``dagster ... -m module_name``
    makes it (this interpreter, this working directory)."""
    return get_repository_python_origin_from_cli_opts(PythonPointerOpts(module_name=module_name))


def load_repository(origin: RepositoryPythonOrigin) -> dg.RepositoryDefinition:
    return recon_repository_from_origin(origin).get_definition()


def reconstructable_job(origin: RepositoryPythonOrigin, job_name: str) -> ReconstructableJob:
    """A job of the code location that ``dg.execute_job`` runs, recorded against the location's origin."""
    return recon_job_from_origin(JobPythonOrigin(job_name, repository_origin=origin))


def instance_config(directory: str) -> Mapping[str, Any]:
    """``directory``'s dagster.yaml, validated (``DagsterInvalidConfigError`` if it is not valid)."""
    config, _ = dagster_instance_config(directory)
    return config


def pool_storage_connections(instance: dg.DagsterInstance) -> None:
    """The instance's PostgreSQL storages keep their connections in a pool (one kept open, up to eight
    more while writers overlap), as ``dagster-webserver`` does, instead of connecting for every call: a
    run over 72 hours plans about 1,400 events before it starts, and each is written by itself (5.3-5.6 ms
    on a new connection, 1.2-1.4 ms on a pooled one; docs/benchmarks.md). No statement timeout: a run's
    writes may take as long as they need. A no-op for storages that have no pool (SQLite)."""
    instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=8)


def fork_run_workers(preload: Sequence[str]) -> None:
    """Every Dagster code server of this process starts its run workers by forking a forkserver that has
    imported ``preload`` once, instead of spawning a new interpreter that imports them for every run.

    ``DagsterApiServer.StartRun`` starts a run's process with ``self._mp_ctx``, which ``__init__`` sets
    to multiprocessing's ``spawn`` context. A property on the class overrides that instance attribute (a
    data descriptor wins over the instance's dict), for servers already built (this runs while one loads
    the code location) and later ones, whose assignment its setter ignores. The forkserver is
    multiprocessing's own: one single-threaded process per code server, started with the first run, which
    forks each worker; Dagster's queue and termination event reach the worker as with ``spawn``."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    DagsterApiServer._mp_ctx = property(lambda self: context, lambda self, value: None)  # type: ignore[assignment]
