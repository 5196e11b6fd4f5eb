"""The MLflow tracking server and model registry (chosen per environment in ``rtml.defs.resources``)."""

from __future__ import annotations

import dagster as dg
from mlflow.tracking import MlflowClient

from rtml.config import get_settings
from rtml.stack.local import LocalStack
from rtml.training.model_registry import client_for


class MlflowResource(dg.ConfigurableResource):
    """The tracking server, and the registered model the platform trains and serves."""

    model_name: str

    def uri(self) -> str:
        raise NotImplementedError

    def client(self) -> MlflowClient:
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
