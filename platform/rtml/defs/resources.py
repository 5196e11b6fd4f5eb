"""Resources shared by every domain: the platform database."""

from __future__ import annotations

import dagster as dg

from rtml.config import get_settings
from rtml.stack.local import LocalStack


class PostgresResource(dg.ConfigurableResource):
    """The platform database. Without a configured URL it resolves the running local stack lazily,
    so loading the definitions never needs a server."""

    url: str | None = None

    def database_url(self) -> str:
        return self.url or LocalStack(get_settings()).info().database_url


defs = dg.Definitions(resources={"postgres": PostgresResource()})
