"""monitoring/: Prometheus config, alert rules and their promtool unit tests, Alertmanager config.

Checked with the real tools (Debian's ``prometheus`` package has ``promtool``, ``prometheus-alertmanager``
has ``amtool``); a missing tool skips its tests (and so fails CI, where they are installed).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "monitoring" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}
SEVERITIES = {"critical", "warning", "info"}
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z0-9_]+$")  # level:metric:operations


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``name`` from the repository root (paths in its output stay short); skip when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: install Debian's {PACKAGES[name]} package (apt-get install)")
    relative = [str(Path(a).relative_to(ROOT)) if isinstance(a, Path) else a for a in args]
    return subprocess.run(
        [path, *relative], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def alerting_rules() -> list[tuple[str, dict[str, Any]]]:
    """(rules file name, rule) of every alerting rule."""
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found += [(path.name, rule) for rule in group["rules"] if "alert" in rule]
    return found


def test_the_files_exist() -> None:
    assert CONFIG.is_file() and ALERTMANAGER.is_file()
    assert RULE_FILES, "no rules in monitoring/prometheus/rules"
    assert TEST_FILES, "no promtool tests in monitoring/prometheus/tests"


def test_promtool_check_config() -> None:
    """The compose config parses (its targets are not resolved) and its rule_files glob finds every file."""
    proc = run_tool("promtool", "check", "config", CONFIG)
    assert proc.returncode == 0, output(proc)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in proc.stdout, output(proc)


def test_promtool_check_rules() -> None:
    proc = run_tool("promtool", "check", "rules", *RULE_FILES)
    assert proc.returncode == 0, output(proc)


def test_promtool_test_rules() -> None:
    proc = run_tool("promtool", "test", "rules", *TEST_FILES)
    assert proc.returncode == 0, output(proc)
    assert "FAILED" not in proc.stdout + proc.stderr, output(proc)


def test_amtool_check_config() -> None:
    proc = run_tool("amtool", "check-config", ALERTMANAGER)
    assert proc.returncode == 0, output(proc)


def test_alertmanager_routes_everything_to_the_webhook() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    assert config["route"]["receiver"] == "rtml-webhook"
    assert config["route"]["group_by"] == ["alertname"]
    assert not config["route"].get("routes"), "one receiver for every alert"
    (receiver,) = config["receivers"]
    (webhook,) = receiver["webhook_configs"]
    assert receiver["name"] == "rtml-webhook" and webhook["send_resolved"] is True


def test_every_alert_has_severity_summary_and_description() -> None:
    rules = alerting_rules()
    assert rules
    problems = []
    for file, rule in rules:
        severity = rule.get("labels", {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{file}: {rule['alert']}: severity {severity!r} not one of {sorted(SEVERITIES)}")
        for annotation in ("summary", "description"):
            if not str(rule.get("annotations", {}).get(annotation, "")).strip():
                problems.append(f"{file}: {rule['alert']}: no {annotation} annotation")
    assert not problems, "\n".join(problems)


def test_recording_rules_are_named_level_metric_operations() -> None:
    names = [
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]
    assert [n for n in names if not RECORD_NAME.match(n)] == []


def test_every_alert_has_a_test_where_it_fires_and_one_where_it_does_not() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for _, rule in alerting_rules()}
    assert sorted(alerts - fires) == [], "alerts without a promtool test case where they fire"
    assert sorted(alerts - silent) == [], "alerts without a promtool test case where they do not fire"
    assert sorted((fires | silent) - alerts) == [], "promtool tests of alerts that do not exist"
