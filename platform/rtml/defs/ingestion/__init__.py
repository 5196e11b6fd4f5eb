"""Ingestion domain: raw transactions and labels into PostgreSQL."""
