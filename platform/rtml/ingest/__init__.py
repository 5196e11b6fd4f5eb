"""Ingestion core: raw-table DDL (``tables``), vectorized row validation with quarantine
(``validation``), the idempotent per-source COPY loader (``loader``) and the landing folder's files
(``landing``). No Dagster imports here."""
