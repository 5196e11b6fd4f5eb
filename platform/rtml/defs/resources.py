"""The servers every domain uses, chosen per environment in this one place (``RTML_ENVIRONMENT``), as the
reference platforms choose their resources per deployment:

* ``local`` (default): the stack that ``rtml up`` / ``rtml demo`` run, embedded servers or the ones its
  URLs name. Each URL is looked up in the running stack when a run first needs it, so loading the
  definitions needs no server.
* ``servers`` (the compose stack, or your own servers): every URL comes from the environment
  (``dg.EnvVar``: ``RTML_DATABASE_URL``, ``RTML_REDIS_URL``, ``RTML_MLFLOW_TRACKING_URI``), read when a
  run starts; nothing local is looked up.

Every environment also carries the platform's :class:`~rtml.config.Settings` as the resource ``settings``
(``settings: dg.ResourceParam[Settings]`` in an asset, check, sensor or schedule), read from the environment
once, when the definitions load: bodies are handed their settings, they never fetch them.

Tests and scripts pass the servers they use (``PostgresServer(url=...)``, ``RedisServer(url=...)``,
``MlflowServer(tracking_uri=...)``) and the settings they mean. The resource classes of a domain live in its
folder.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from rtml.config import Settings, get_settings
from rtml.defs.online.resources import LocalRedis, RedisServer
from rtml.defs.training.resources import LocalMlflow, MlflowServer
from rtml.stack.local import LocalStack


class PostgresResource(dg.ConfigurableResource):
    """The platform database."""

    def database_url(self) -> str:
        raise NotImplementedError


class PostgresServer(PostgresResource):
    url: str

    def database_url(self) -> str:
        return self.url


class LocalPostgres(PostgresResource):
    """The local stack's database, looked up when first asked."""

    def database_url(self) -> str:
        return LocalStack(get_settings()).info().database_url


def environment_resources(settings: Settings) -> dict[str, Any]:
    """The resources of ``settings.services.environment``, and ``settings`` itself."""
    model_name = settings.training.model_name
    if settings.services.environment == "servers":
        servers: dict[str, dg.ConfigurableResource] = {
            "postgres": PostgresServer(url=dg.EnvVar("RTML_DATABASE_URL")),
            "redis": RedisServer(url=dg.EnvVar("RTML_REDIS_URL")),
            "mlflow": MlflowServer(tracking_uri=dg.EnvVar("RTML_MLFLOW_TRACKING_URI"), model_name=model_name),
        }
    else:
        servers = {
            "postgres": LocalPostgres(),
            "redis": LocalRedis(),
            "mlflow": LocalMlflow(model_name=model_name),
        }
    return {**servers, "settings": settings}


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources=environment_resources(get_settings()))
