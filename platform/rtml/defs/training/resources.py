"""The MLflow tracking server and model registry (chosen per environment in ``rtml.defs.resources``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from rtml.config import get_settings
from rtml.stack.local import LocalStack

if TYPE_CHECKING:  # MLflow is imported when a client is asked for, not when the code location loads
    from mlflow.tracking import MlflowClient


class MlflowResource(dg.ConfigurableResource):
    """The tracking server, and the registered model the platform trains and serves."""

    model_name: str

    def uri(self) -> str:
        raise NotImplementedError

    def client(self) -> MlflowClient:
        from rtml.training.model_registry import client_for

        return client_for(self.uri())

    def version_url(self, version: str) -> str:
        return f"{self.uri().rstrip('/')}/#/models/{self.model_name}/versions/{version}"


class MlflowServer(MlflowResource):
    tracking_uri: str

    def uri(self) -> str:
        return self.tracking_uri


class LocalMlflow(MlflowResource):
    """The local stack's MLflow server, looked up when first asked."""

    def uri(self) -> str:
        return LocalStack(get_settings()).info().mlflow_tracking_uri
