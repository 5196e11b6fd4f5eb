"""Monitoring domain: drift reports (features and scores against the production model's training window)
with their threshold check, the served model's live performance, and run outcomes as metrics."""
