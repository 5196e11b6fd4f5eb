# Two commands set everything up: `make demo` (the main job) and `make test` (the suite).
# Both create .venv with uv from the lock file; nothing needs to be installed by hand but Python 3.11.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: demo test compile lint docs-config clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# Re-synced whenever the lock file changes; uv itself is a dev dependency, so sync keeps it.
# Installed with their bytecode (pip's default, not uv's): where PYTHONDONTWRITEBYTECODE is set, as on
# this machine, every process would otherwise compile Dagster, dbt and MLflow from source on import
# (16 s → 6 s for the code location). The repository's own modules are compiled before each command.
$(VENV)/.synced: $(BIN)/uv pyproject.toml uv.lock
	$(BIN)/uv sync --frozen --quiet --compile-bytecode
	touch $@

compile: $(VENV)/.synced
	$(BIN)/python -m compileall -q platform tests benchmarks monitoring >/dev/null

demo: compile
	$(BIN)/rtml demo

# Two workers, one module at a time each (--dist loadfile: a module's fixtures stay in one process);
# every worker runs a stack of its own (PostgreSQL, Redis, MLflow). PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

test: compile
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.synced
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/actionlint
	$(BIN)/zizmor --offline --no-progress .github/workflows
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yaml

docs-config: $(VENV)/.synced
	$(BIN)/rtml config-docs > docs/configuration.md

clean:
	-$(BIN)/rtml down
	rm -rf $(VENV) .rtml
