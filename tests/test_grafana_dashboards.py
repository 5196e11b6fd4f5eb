"""The Grafana dashboards (monitoring/grafana): committed JSON up to date with the generator, panels
complete (title, description, unit, Prometheus target on the provisioned datasource), layout without
overlaps, every query valid PromQL (promtool), and the provisioning files consistent with them."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "monitoring" / "grafana"
GENERATOR = GRAFANA / "dashboards.py"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = GRAFANA / "provisioning"
UIDS = {"rtml-api", "rtml-model", "rtml-pipeline", "rtml-infrastructure"}
REGENERATE = "run .venv/bin/python monitoring/grafana/dashboards.py"


def load_generator() -> ModuleType:
    """monitoring/grafana/dashboards.py, imported by path (monitoring/ is not a package)."""
    name = "rtml_grafana_dashboards"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        found[dashboard["uid"]] = dashboard
    return found


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("panels") or [])


def test_committed_json_is_what_the_generator_writes(generator: ModuleType) -> None:
    generated = generator.generate()
    committed = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert sorted(committed) == sorted(generated), f"dashboard files differ: {REGENERATE}"
    for name, text in generated.items():
        assert committed[name] == text, f"{DASHBOARDS / name} is out of date: {REGENERATE}"
    # deterministic: a second run generates the same bytes
    assert generator.generate() == generated


def test_dashboards_uids_and_folder(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == UIDS
    for uid, dashboard in dashboards.items():
        assert (DASHBOARDS / f"{uid}.json").is_file(), f"{uid}: file name must be <uid>.json"
        assert dashboard["title"]
        assert "rtml" in dashboard.get("tags", [])
        # no template variables: every query must run as is (promtool, live Prometheus)
        assert not (dashboard.get("templating") or {}).get("list"), f"{uid}: template variables"
        assert "id" not in dashboard or dashboard["id"] is None, f"{uid}: provisioned dashboards have no id"


def test_every_panel_is_complete(dashboards: dict[str, dict[str, Any]], generator: ModuleType) -> None:
    for uid, dashboard in dashboards.items():
        assert panels(dashboard), f"{uid}: no panels"
        ids = [p.get("id") for p in panels(dashboard)]
        assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), f"{uid}: panel ids {ids}"
        titles = [p.get("title") for p in panels(dashboard)]
        assert len(set(titles)) == len(titles), f"{uid}: duplicate panel titles"
        for p in panels(dashboard):
            where = f"{uid} / {p.get('title')!r}"
            assert p.get("title"), f"{uid}: panel {p.get('id')} has no title"
            assert p.get("description"), f"{where}: no description"
            assert p.get("type"), f"{where}: no type"
            assert p.get("fieldConfig", {}).get("defaults", {}).get("unit"), f"{where}: no unit"
            assert p.get("options") is not None, f"{where}: options is null"
            assert p.get("datasource") == {"type": "prometheus", "uid": generator.DATASOURCE_UID}, where
            targets = p.get("targets") or []
            assert targets and all(t.get("expr") for t in targets), f"{where}: a target without expr"
            ref_ids = [t.get("refId") for t in targets]
            assert len(set(ref_ids)) == len(ref_ids), f"{where}: duplicate refIds {ref_ids}"
            for t in targets:
                assert t.get("datasource", p["datasource"])["uid"] == generator.DATASOURCE_UID, where
                assert "$" not in t["expr"], f"{where}: variables ($...) in {t['expr']!r}"
                # fixed windows only: a range selector is [<n><unit>]
                for window in re.findall(r"\[([^\]]*)\]", t["expr"]):
                    assert re.fullmatch(r"\d+[smhd]", window), f"{where}: window [{window}]"


def test_grid_positions_do_not_overlap(dashboards: dict[str, dict[str, Any]]) -> None:
    for uid, dashboard in dashboards.items():
        boxes = []
        for p in panels(dashboard):
            pos = p.get("gridPos") or {}
            assert {"x", "y", "w", "h"} <= set(pos), f"{uid} / {p.get('title')!r}: gridPos {pos}"
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0
            assert pos["x"] + pos["w"] <= 24, f"{uid} / {p['title']!r} is wider than the grid"
            boxes.append((p["title"], pos))
        for (a, pa), (b, pb) in combinations(boxes, 2):
            overlap = (
                pa["x"] < pb["x"] + pb["w"]
                and pb["x"] < pa["x"] + pa["w"]
                and pa["y"] < pb["y"] + pb["h"]
                and pb["y"] < pa["y"] + pa["h"]
            )
            assert not overlap, f"{uid}: panels {a!r} {pa} and {b!r} {pb} overlap"


def test_panel_queries_lists_every_target(
    generator: ModuleType, dashboards: dict[str, dict[str, Any]]
) -> None:
    queries = generator.panel_queries()
    expected = [
        (uid, p["title"], t["expr"])
        for uid in sorted(dashboards)
        for p in panels(dashboards[uid])
        for t in p["targets"]
    ]
    assert sorted(queries) == sorted(expected)
    assert {uid for uid, _, _ in queries} == UIDS


def test_every_query_is_valid_promql(generator: ModuleType, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found (Debian package prometheus): PromQL of the panels not checked")
    queries = generator.panel_queries()
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [{"record": f"panel:q{n}", "expr": expr} for n, (_, _, expr) in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    listing = "\n".join(
        f"panel:q{n}: {uid} / {title}: {expr}" for n, (uid, title, expr) in enumerate(queries)
    )
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}{result.stderr}\n{listing}"
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout, result.stdout


def test_provisioning_matches_the_dashboards(generator: ModuleType) -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (datasource,) = datasources["datasources"]
    assert datasource["uid"] == generator.DATASOURCE_UID == "rtml-prometheus"
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "rtml.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["folder"] == generator.FOLDER == "rtml"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
