"""The MLflow tracking server and model registry."""

from __future__ import annotations

import dagster as dg
from mlflow.tracking import MlflowClient
from pydantic import Field

from rtml.config import get_settings
from rtml.stack.local import LocalStack
from rtml.training.model_registry import client_for


class MlflowResource(dg.ConfigurableResource):
    """Without a configured URI it resolves the running local stack's MLflow server lazily, so loading
    the definitions never needs a server."""

    tracking_uri: str | None = None
    model_name: str = Field(default_factory=lambda: get_settings().training.model_name)

    def uri(self) -> str:
        return self.tracking_uri or LocalStack(get_settings()).info().mlflow_tracking_uri

    def client(self) -> MlflowClient:
        return client_for(self.uri())

    def version_url(self, version: str) -> str:
        return f"{self.uri().rstrip('/')}/#/models/{self.model_name}/versions/{version}"


defs = dg.Definitions(resources={"mlflow": MlflowResource()})
