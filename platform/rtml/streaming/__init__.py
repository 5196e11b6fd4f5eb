"""The speed layer's core (docs/streaming.md): transaction events, per-customer stream state applied
idempotently, exact customer features at request time merged from the batch snapshot and the stream,
and that state in Redis. No Dagster, no BentoML here."""
