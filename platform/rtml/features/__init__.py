"""Offline features: the dbt project's runner (``dbt``), the feature registry read from the dbt manifest
(``registry``) and the feature catalogue (``docs``). Core library: no Dagster or BentoML imports."""
