"""Dagster definitions: one folder per domain, loaded by ``definitions.py``.

This layer is thin glue: it turns the core libraries' functions into assets, checks, sensors and
schedules. Business logic lives in ``rtml.sources``, ``rtml.ingest`` and the other core packages.
"""
