"""MLflow's one private function rtml calls, in one place: building MLflow's map of installed packages
before ``log_model`` needs it.

``mlflow.sklearn.log_model`` checks the model's pip requirements against the environment
(``warn_dependency_requirement_mismatches``, with no setting to skip it). The check maps import names to
distributions through ``importlib_metadata.packages_distributions()``, which reads the file list of every
installed distribution: about 1 s here, once per process (MLflow keeps the map), and so once per
training in a Dagster run's process. ``load_installed_packages`` builds it while the model fits,
mostly outside the GIL, instead of in the logging step, where it held the GIL against the permutation
importance running beside it (docs/benchmarks.md, "Training", round two).

Used here and nowhere else: ``mlflow.utils.requirements_utils._init_modules_to_packages_map``. MLflow is
pinned (pyproject.toml); tests/test_private_apis.py fails by name when a new version changes it.
"""

from __future__ import annotations


def load_installed_packages() -> None:
    """MLflow's map of import names to installed distributions, built now (a no-op once built)."""
    from mlflow.utils import requirements_utils

    requirements_utils._init_modules_to_packages_map()
