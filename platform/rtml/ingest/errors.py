"""Exceptions of ingestion; the Dagster layer retries only ``TransientDatabaseError``."""

from __future__ import annotations


class IngestError(RuntimeError):
    """Loading failed for a reason a retry will not fix; the message says what, where and how to fix."""


class TransientDatabaseError(IngestError):
    """The database failed in a way worth retrying (connection lost, serialization failure, deadlock,
    server shutting down). The load's transaction was rolled back: nothing of it is visible."""


class SchemaMismatchError(IngestError, ValueError):
    """A batch's columns do not match the record schema; the whole batch is refused."""
