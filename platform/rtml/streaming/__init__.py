"""The speed layer's core (docs/streaming.md): transaction events, per-customer stream state applied
idempotently, and exact customer features at request time merged from the batch snapshot and the
stream. Pure Python: no Dagster, no BentoML, no Redis client here."""
