"""The import graph flows one way (README "Layout"): the core libraries (``rtml.features``, ``rtml.ingest``,
``rtml.monitoring``, ``rtml.sources``, ``rtml.streaming``, ``rtml.training``, the configuration and the
local stack's supervisor) never import Dagster or BentoML, nor the scoring service; only the edges do
(``rtml.definitions`` and ``rtml.defs``, the demo's bootstrap, the CLI, ``rtml.serving``).

Each module is imported in a fresh interpreter where Dagster, BentoML and ``rtml.serving`` cannot be
imported at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGES = (
    "rtml.defs",
    "rtml.definitions",
    "rtml.demo_bootstrap",  # materializes the demo window through Dagster
    "rtml.cli",
    "rtml.live_cli",
    "rtml.stream_cli",
    "rtml.runs_cli",
    "rtml.serving",  # the BentoML service
)
"""Modules that wire the core into Dagster, BentoML or a command line, allowed to import them."""

PROBE = """
import importlib, json, pkgutil, sys

BLOCKED = ("dagster", "dagster_dbt", "dagster_postgres", "dagster_webserver", "dagster_graphql",
           "bentoml", "_bentoml_sdk", "_bentoml_impl")

class Unimportable:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name == "rtml.serving" or name.startswith("rtml.serving."):
            raise ImportError(f"{name} is unimportable here")
        return None

sys.meta_path.insert(0, Unimportable())
import rtml

edges = tuple(sys.argv[1].split(","))
core, refused = [], {}
for module in pkgutil.walk_packages(rtml.__path__, "rtml."):
    if module.name.startswith(edges):
        continue
    core.append(module.name)
    try:
        importlib.import_module(module.name)
    except ImportError as exc:
        refused[module.name] = str(exc)
# the graph flows one way: importing every core module loaded no edge module (no Dagster definitions, no
# CLI); the edges' packages themselves are imported by walk_packages to list what is inside them
reached_edges = sorted(
    name for name, module in sys.modules.items() if name.startswith(edges) and not hasattr(module, "__path__")
)
blocked = {}
for edge in ("rtml.definitions", "rtml.serving.scoring"):  # the blocker works on both kinds of edge
    try:
        importlib.import_module(edge)
        blocked[edge] = False
    except ImportError:
        blocked[edge] = True
print(json.dumps({"core": core, "refused": refused, "reached_edges": reached_edges, "blocked": blocked}))
"""


def test_core_modules_import_without_dagster_or_bentoml() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(EDGES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"]["rtml.definitions"], "Dagster was importable: the probe proves nothing"
    assert result["blocked"]["rtml.serving.scoring"], "rtml.serving was importable: the probe proves nothing"
    packages = {name.split(".")[1] for name in result["core"] if name.count(".") >= 1}
    assert {"features", "ingest", "monitoring", "sources", "streaming", "training", "config"} <= packages
    assert result["refused"] == {}, result["refused"]
    assert result["reached_edges"] == [], f"core modules import edges: {result['reached_edges']}"


def test_core_modules_are_passed_their_settings() -> None:
    """Settings are passed, not fetched: only the edges read the environment (``get_settings()``); a core
    library takes the settings slice it needs as an argument (``load_transactions(..., ingest)``)."""
    package = ROOT / "platform" / "rtml"
    fetching = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(("rtml", *path.relative_to(package).with_suffix("").parts))
        if module.startswith(EDGES) or module == "rtml.config":
            continue
        if "get_settings" in path.read_text():
            fetching.append(module)
    assert fetching == []
