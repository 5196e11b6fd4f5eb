"""Model training: the training set by time window, the sklearn pipeline, evaluation and thresholds,
MLflow logging and registration. No Dagster or BentoML here (``rtml.defs.training`` wraps it)."""
