"""Every ``rtml_*`` metric name and label the alert rules (``monitoring/prometheus/rules``) and the Grafana
dashboards (``monitoring/grafana/dashboards``) use is defined by the code. Static: no server runs.

Where the names and labels come from (read where they are defined, never copied here):
* the pipeline's pushed metrics: ``rtml.monitoring.metrics.METRICS``, plus the Pushgateway group's labels;
* the scorer's: the ``prometheus_client`` constructors in ``rtml/serving/metrics.py``, read from its source
  (importing it needs BentoML), with the series each type exposes (``_bucket`` with ``le``, ...); the
  stream worker's and the lander's the same way, from ``platform/rtml/streaming/{worker,lander}.py``;
* recording rules (``rtml:...``): the rules themselves, their labels derived from their expressions.

PromQL is parsed by promql-parser, and labels are followed through each expression (selectors,
aggregations, vector matching, functions), so a matcher, a ``by``/``on``/``ignoring`` label, a
``$labels.x`` in an alert's annotations or a ``{{x}}`` panel legend must name a label that the series
underneath carry. Metrics of others (BentoML's ``bentoml_*``, exporters', ``up``) are out of scope: their
labels are not checked, but what an aggregation over them keeps is.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser as promql
import pytest
import yaml

from rtml.monitoring import metrics

ROOT = Path(__file__).resolve().parents[1]
SCORER_METRICS = ROOT / "platform" / "rtml" / "serving" / "metrics.py"
STREAM_WORKER = ROOT / "platform" / "rtml" / "streaming" / "worker.py"
STREAM_LANDER = ROOT / "platform" / "rtml" / "streaming" / "lander.py"
RULE_FILES = sorted((ROOT / "monitoring" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "monitoring" / "grafana" / "dashboards").glob("*.json"))

OURS = ("rtml_", "rtml:")
SCRAPE_LABELS = frozenset({"job", "instance"})
"""Target labels Prometheus adds to every scraped series (the Pushgateway's are honoured: its groups')."""
EXPOSED = {
    "Counter": ("", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("", "_sum", "_count", "_created"),
}
"""Series names ``prometheus_client`` exposes per metric type (a Counter's name keeps its ``_total``)."""
LABEL_REF = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
LEGEND_REF = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
NAMED_IN_TEXT = re.compile(r"\b(rtml_[a-zA-Z0-9_]*)(\{[^}]*\})?")
MATCHER_IN_TEXT = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


# --- what the code defines ----------------------------------------------------------------------------------
def pipeline_series() -> dict[str, frozenset[str]]:
    group = frozenset(metrics.GROUP_LABELS)
    return {name: frozenset(metric.labels) | group for name, metric in metrics.METRICS.items()}


def scorer_series(source: str) -> dict[str, frozenset[str]]:
    """Series of every ``rtml_*`` metric that a ``Counter``/``Gauge``/``Histogram``/``Summary`` call in
    ``source`` creates, with their labels (literal names and label lists, as the service writes them)."""
    out: dict[str, frozenset[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in EXPOSED):
            continue
        if not (
            node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith(OURS)
        ):
            continue
        name = str(node.args[0].value)
        keywords = {k.arg: k.value for k in node.keywords}
        declared = node.args[2] if len(node.args) > 2 else keywords.get("labelnames")
        labels = set(_literal_strings(declared, name)) if declared is not None else set()
        mode = keywords.get("multiprocess_mode")
        if isinstance(mode, ast.Constant) and mode.value in ("all", "liveall"):
            labels.add("pid")  # multiprocess gauges keep one series per worker process
        for suffix in EXPOSED[node.func.id]:
            extra = (
                {"le"}
                if suffix == "_bucket"
                else {"quantile"}
                if node.func.id == "Summary" and not suffix
                else set()
            )
            out[name + suffix] = frozenset(labels | extra | SCRAPE_LABELS)
    return out


def _literal_strings(node: ast.expr, metric: str) -> list[str]:
    if isinstance(node, (ast.List, ast.Tuple)) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return [str(e.value) for e in node.elts]  # type: ignore[attr-defined]
    raise AssertionError(f"{metric}: its label names must be a literal list where it is defined")


# --- following labels through PromQL ------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """What an expression yields: a scalar, or a vector whose series carry ``labels`` (None: unknown,
    a metric outside our contract)."""

    labels: frozenset[str] | None
    scalar: bool = False


SCALAR = Shape(frozenset(), scalar=True)
UNKNOWN = Shape(None)


@dataclass
class Checker:
    series: dict[str, frozenset[str] | None]
    """Name → labels of every series our code or rules define (None: a recording rule over metrics of
    others, labels unknown)."""
    errors: list[str] = field(default_factory=list)

    def check(self, where: str, query: str) -> Shape:
        try:
            expr = promql.parse(query)
        except Exception as error:  # the parser's own error type is not exported
            self.errors.append(f"{where}: not PromQL ({error}): {query}")
            return UNKNOWN
        return self._shape(expr, where)

    def _need(self, where: str, what: str, labels: set[str] | list[str], shape: Shape) -> None:
        if shape.labels is not None and (absent := sorted(set(labels) - shape.labels)):
            self.errors.append(f"{where}: {what} {absent}: not among the labels {sorted(shape.labels)}")

    def _shape(self, expr: Any, where: str) -> Shape:
        if isinstance(expr, (promql.NumberLiteral, promql.StringLiteral)):
            return SCALAR
        if isinstance(expr, (promql.ParenExpr, promql.UnaryExpr, promql.SubqueryExpr)):
            return self._shape(expr.expr, where)
        if isinstance(expr, promql.MatrixSelector):
            return self._shape(expr.vector_selector, where)
        if isinstance(expr, promql.VectorSelector):
            return self._selector(expr, where)
        if isinstance(expr, promql.Call):
            return self._call(expr, where)
        if isinstance(expr, promql.AggregateExpr):
            inner = self._shape(expr.expr, where)
            if expr.param is not None:
                self._shape(expr.param, where)
            modifier = expr.modifier
            if modifier is None:
                return Shape(frozenset()) if str(expr.op) not in ("topk", "bottomk") else inner
            self._need(
                where, f"{expr.op} {str(modifier.type).split('.')[-1].lower()}", modifier.labels, inner
            )
            if modifier.type == promql.AggModifierType.By:
                return Shape(frozenset(modifier.labels))
            return Shape(None if inner.labels is None else inner.labels - set(modifier.labels))
        if isinstance(expr, promql.BinaryExpr):
            return self._binary(expr, where)
        raise AssertionError(f"{where}: no rule for {type(expr).__name__} in this test")

    def _selector(self, selector: Any, where: str) -> Shape:
        name = selector.name or next(
            (m.value for m in selector.matchers.matchers if m.name == "__name__"), None
        )
        if not name or not name.startswith(OURS):
            return UNKNOWN
        if name not in self.series:
            self.errors.append(f"{where}: {name} is not defined by the code")
            return UNKNOWN
        shape = Shape(self.series[name])
        matchers = [m.name for m in selector.matchers.matchers if m.name != "__name__"]
        self._need(where, f"{name} matcher", matchers, shape)
        return shape

    def _call(self, call: Any, where: str) -> Shape:
        args = [self._shape(arg, where) for arg in call.args]
        name = call.func.name
        if name in ("time", "scalar", "pi"):
            return SCALAR
        if name == "vector":
            return Shape(frozenset())
        if name in ("absent", "absent_over_time"):  # the equality matchers' labels, if any
            selector = call.args[0]
            selector = getattr(selector, "vector_selector", selector)
            equal = [m.name for m in selector.matchers.matchers if str(m.op).endswith("Equal")]
            return Shape(frozenset(equal) - {"__name__"})
        if name == "histogram_quantile":
            self._need(where, "histogram_quantile needs", ["le"], args[1])
            return Shape(None if args[1].labels is None else args[1].labels - {"le"})
        if name in ("label_replace", "label_join"):
            destination = str(call.args[1]).strip("\"'")
            return Shape(None if args[0].labels is None else args[0].labels | {destination})
        vectors = [shape for shape in args if not shape.scalar]
        return vectors[0] if vectors else SCALAR

    def _binary(self, expr: Any, where: str) -> Shape:
        left, right = self._shape(expr.lhs, where), self._shape(expr.rhs, where)
        if left.scalar or right.scalar:
            return right if left.scalar else left
        op = str(expr.op)
        modifier = expr.modifier
        matching = modifier.matching if modifier is not None else None
        on = matching is not None and matching.type == promql.LabelModifierType.Include
        if matching is not None:
            labels = list(matching.labels)
            if on:  # matched on: both sides have them
                self._need(where, f"{op} on", labels, left)
                self._need(where, f"{op} on", labels, right)
            elif left.labels is not None and right.labels is not None:
                self._need(where, f"{op} ignoring", labels, Shape(left.labels | right.labels))
        if op == "or":
            if left.labels is None or right.labels is None:
                return UNKNOWN
            return Shape(left.labels & right.labels)  # only what every series of the result carries
        if op in ("and", "unless") or left.labels is None:
            return left
        include = list(modifier.group_labels) if modifier is not None and modifier.group_labels else []
        self._need(where, f"{op} group_left/right", include, right)
        one_to_one = modifier is None or modifier.card == promql.VectorMatchCardinality.OneToOne
        if one_to_one and matching is not None:
            kept = frozenset(matching.labels) if on else left.labels - set(matching.labels)
            return Shape(kept | set(include))
        return Shape(left.labels | set(include))


# --- the rules and the panels -------------------------------------------------------------------------------
def rule_groups() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                yield f"{path.name}: {rule.get('alert') or rule.get('record')}", rule


def panels() -> Iterator[tuple[str, dict[str, Any]]]:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "expr" in node:
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard.get("panels", []):
            for target in walk(panel):
                yield f"{path.name}: {panel.get('title')}", target


def contract() -> dict[str, frozenset[str]]:
    scraped = {
        name: labels
        for path in (SCORER_METRICS, STREAM_WORKER, STREAM_LANDER)
        for name, labels in scorer_series(path.read_text()).items()
    }
    series = {**pipeline_series(), **scraped}
    overlap = set(pipeline_series()) & set(scraped)
    assert not overlap, f"defined both as pushed and as scraped metrics: {sorted(overlap)}"
    return series


def check_everything(series: dict[str, frozenset[str]]) -> list[str]:
    """The contract's violations in every rule and panel (recording rules extend ``series``)."""
    checker = Checker(dict[str, frozenset[str] | None](series))
    for where, rule in rule_groups():
        shape = checker.check(where, rule["expr"])
        rule_labels = set(rule.get("labels", {}))
        if "record" in rule:  # defines a name for the rules and panels after it
            checker.series[rule["record"]] = None if shape.labels is None else shape.labels | rule_labels
            continue
        available = Shape(None if shape.labels is None else shape.labels | rule_labels | {"alertname"})
        for key, text in rule.get("annotations", {}).items():
            checker._need(f"{where} {key}", "$labels", LABEL_REF.findall(text), available)
            for name, braces in NAMED_IN_TEXT.findall(text):
                # prose may name a histogram by its base name: its labels are those of `_sum`
                defined = next((n for n in (name, f"{name}_sum") if n in checker.series), None)
                if defined is None:
                    checker.errors.append(f"{where} {key}: names {name}, not defined by the code")
                elif braces:
                    matchers = MATCHER_IN_TEXT.findall(braces)
                    checker._need(
                        f"{where} {key}", f"{name} matcher", matchers, Shape(checker.series[defined])
                    )
    for where, target in panels():
        shape = checker.check(where, target["expr"])
        checker._need(
            where,
            f"legend {target.get('legendFormat')!r}",
            LEGEND_REF.findall(target.get("legendFormat") or ""),
            shape,
        )
    return checker.errors


# --- tests --------------------------------------------------------------------------------------------------
def test_the_scorer_metrics_are_read_from_the_service() -> None:
    series = scorer_series(SCORER_METRICS.read_text())
    assert series["rtml_scoring_stage_seconds_bucket"] == {"stage", "le", "job", "instance"}
    assert series["rtml_scoring_decisions_total"] == {"decision", "model_version", "job", "instance"}
    assert series["rtml_scoring_model_info"] == {
        "model_name",
        "model_version",
        "source",
        "path",
        "pid",
        "job",
        "instance",
    }
    assert series["rtml_scoring_degraded_total"] == {"reason", "job", "instance"}
    assert series["rtml_scoring_redis_breaker_open"] == {"pid", "job", "instance"}
    with pytest.raises(AssertionError, match="must be a literal list"):
        scorer_series("Counter('rtml_x_total', 'doc', LABELS)")


def test_every_rtml_name_and_label_in_rules_and_dashboards_is_defined_by_the_code() -> None:
    assert list(rule_groups()) and list(panels())
    errors = check_everything(contract())
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("rtml_online_view_presnt == 0", "rtml_online_view_presnt is not defined by the code"),
        ('rtml_online_view_present{viwe="x"} == 0', "rtml_online_view_present matcher ['viwe']"),
        ("sum by (store) (rtml_online_view_present)", "sum by ['store']"),
        ("max by (view) (rtml_online_view_present) and on (asset) rtml_drift_share", "and on ['asset']"),
        (
            "sum by (view) (rtml_online_view_present) / on (view) sum by (report) (rtml_drift_share)",
            "/ on ['view']: not among the labels ['report']",
        ),
        (
            "histogram_quantile(0.9, sum by (stage) (rate(rtml_scoring_stage_seconds_bucket[5m])))",
            "needs ['le']",
        ),
    ],
)
def test_the_check_finds_a_wrong_name_or_label(query: str, error: str) -> None:
    checker = Checker(dict[str, frozenset[str] | None](contract()))
    checker.check("query", query)
    assert any(error in found for found in checker.errors), checker.errors


def test_the_check_finds_labels_that_an_aggregation_dropped() -> None:
    """A legend or an annotation can only use what the expression keeps."""
    checker = Checker(dict[str, frozenset[str] | None](contract()))
    shape = checker.check("panel", "sum by (view) (rtml_online_view_present)")
    checker._need("panel", "legend", LEGEND_REF.findall("{{view}} {{asset}}"), shape)
    assert checker.errors == ["panel: legend ['asset']: not among the labels ['view']"]
    assert checker.check("q", "rtml_online_view_present == 0").labels == {"view", "job", "asset"}
    assert checker.check("q", "sum(rate(rtml_scoring_decisions_total[5m])) or vector(0)").labels == set()


def test_a_sample_outside_the_contract_is_refused_without_a_gateway() -> None:
    """Checked when made: a wrong name or label fails the asset's own tests, gateway or not."""
    with pytest.raises(metrics.MetricContractError, match="unknown pipeline metric 'rtml_pipeline_row'"):
        metrics.Sample("rtml_pipeline_row", 1.0, {"asset": "a", "kind": "loaded", "partition": ""})
    with pytest.raises(metrics.MetricContractError, match=r"labels \['asset'\] differ from the contract"):
        metrics.Sample("rtml_pipeline_rows", 1.0, {"asset": "a"})
    with pytest.raises(metrics.MetricContractError, match="label values must be strings"):
        metrics.Sample("rtml_online_view_present", 1.0, {"view": 1})  # type: ignore[dict-item]
    good = metrics.run_samples("transactions_raw", 1.5, loaded=10, quarantined=1, partition="p")
    assert metrics.publish("transactions_raw", good, None) is False  # built and checked, not pushed
    with pytest.raises(ValueError):  # prometheus_client's own checks run without a gateway too
        metrics.publish("x", [metrics.Sample("rtml_drift_share", "high", {"report": "features"})], None)  # type: ignore[arg-type]
