"""Dagster glue of the dbt feature store (``rtml.features`` is the core library)."""
