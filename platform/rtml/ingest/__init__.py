"""Ingestion core: raw-table DDL (``tables``), vectorized row validation with quarantine
(``validation``), and the idempotent per-source COPY loader (``loader``). No Dagster imports here."""
