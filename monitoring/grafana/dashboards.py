"""Grafana dashboards as code (``grafana-foundation-sdk``): the four rtml dashboards, generated into
``monitoring/grafana/dashboards/<uid>.json`` and provisioned from there into the Grafana folder "rtml"
(``provisioning/dashboards/rtml.yml``) with the Prometheus datasource of uid ``rtml-prometheus``
(``provisioning/datasources/prometheus.yml``).

Regenerate after editing this file (the JSON files are committed; ``tests/test_grafana_dashboards.py``
fails when they differ from what this file generates)::

    .venv/bin/python monitoring/grafana/dashboards.py            # write the JSON files
    .venv/bin/python monitoring/grafana/dashboards.py --check    # exit 1 if they are out of date

Dashboards (metric names: ``platform/rtml/monitoring/metrics.py``, ``rtml/serving/metrics.py`` ``Metrics``):

* ``rtml-api`` (Scoring API): request rate by endpoint and status, ``/score`` latency p50/p95/p99,
  5xx error ratio, degraded (fail-open) share by reason, stage latency p99 (feature_lookup vs inference),
  in-progress requests, 503s by reason, prediction-log rows (written, spilled, drained, dropped); under
  faults: the Redis circuit breaker (open workers, transitions), the missing-feature share by cause,
  abandoned requests.
* ``rtml-model`` (Model): served version (per worker), model swaps, score distribution (heatmap and
  last-hour histogram), mean score, decision mix, transactions by model version, missing-feature share
  by entity, live ROC AUC / precision / recall, live vs training ROC AUC, training metrics of the
  registered versions, and the staged version against production on live requests (PR AUC and recall at
  production's decline rate of both, the verdict, labelled sample and decision agreement).
* ``rtml-pipeline`` (Data pipeline): rows loaded / quarantined per materialization (hourly partition),
  quarantine share, feature freshness lag per view and store, drift share and drifted flag, per-feature
  drift score, run durations, time since each asset's last success, last failure / success per job;
  the stream workers' lag (age and events), events by outcome, freshness and batch time; the lander's
  (stream-fed deployments) lag, events by outcome, micro-batches, freshness and batch time.
* ``rtml-infrastructure`` (Infrastructure): node CPU and memory, Redis (up, memory, clients,
  commands/s, keys), PostgreSQL (up, backends, commits/s, cache hit ratio), scrape target health.

Queries use fixed windows (``[5m]``, ``[1h]``, ``[24h]``) and no template variables, so every expression
runs as is in ``promtool`` and against Prometheus (``panel_queries()`` lists them from the JSON files).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import heatmap as heatmap_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

DATASOURCE_UID = "rtml-prometheus"
DATASOURCE = models.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)
FOLDER = "rtml"
DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"
GRID_WIDTH = 24

PanelBuilder = timeseries.Panel | stat.Panel | table.Panel | bargauge.Panel | heatmap.Panel

# The scoring routes of rtml/serving/service.py (BentoML's `endpoint` label is the request path).
SCORE_ROUTES = 'endpoint=~"/score|/score_batch"'
# Feature freshness lag from the pushed newest event time (rtml.monitoring.metrics): computed here rather
# than read from the recording rule rtml_feature_freshness_lag_seconds, so the panels do not depend on
# Prometheus' rule files.
FRESHNESS = "time() - rtml_feature_newest_event_timestamp_seconds"
# pg_stat_database rows that are not application databases (datname="" is the shared-objects row).
PG_DATABASES = 'datname!~"template0|template1|"'


# --- queries and panels --------------------------------------------------------------------------


def query(
    expr: str, legend: str | None = None, *, instant: bool = False, fmt: str | None = None
) -> prometheus.Dataquery:
    """A Prometheus target on the provisioned datasource (refIds are set by ``panel``)."""
    target = prometheus.Dataquery().expr(expr).datasource(DATASOURCE)
    if legend is not None:
        target = target.legend_format(legend)
    if instant:
        target = target.instant()
    if fmt is not None:
        target = target.format(prometheus_models.PromQueryFormat(fmt))
    return target


def panel(
    builder: PanelBuilder,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
) -> PanelBuilder:
    """Title, description, unit, datasource and targets (refIds A, B, ...) common to every panel."""
    builder = builder.title(title).description(description).unit(unit).datasource(DATASOURCE)
    for i, target in enumerate(targets):
        builder = builder.with_target(target.ref_id(chr(ord("A") + i)))
    return builder


def thresholds(*steps: tuple[float | None, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in steps])
    )


GREEN = (None, "green")


def timeseries_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    stack: bool = False,
    bars: bool = False,
    points: bool = False,
    min_val: float | None = 0,
    max_val: float | None = None,
    decimals: int | None = None,
) -> PanelBuilder:
    builder = (
        timeseries.Panel()
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(10)
        .draw_style(common.GraphDrawStyle.BARS if bars else common.GraphDrawStyle.LINE)
        .show_points(common.VisibilityMode.ALWAYS if points else common.VisibilityMode.AUTO)
        .span_nulls(False)
    )
    if stack:
        builder = builder.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL))
    if min_val is not None:
        builder = builder.min(min_val)
    if max_val is not None:
        builder = builder.max(max_val)
    if decimals is not None:
        builder = builder.decimals(decimals)
    return panel(builder, title, description, unit, targets)


def stat_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    steps: Sequence[tuple[float | None, str]] = (GREEN,),
    mappings: dict[str, tuple[str, str]] | None = None,
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
    decimals: int | None = None,
) -> PanelBuilder:
    """A stat panel of the last value; ``mappings``: value -> (text, color)."""
    builder = (
        stat.Panel()
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .color_mode(
            common.BigValueColorMode.VALUE if mappings is None else common.BigValueColorMode.BACKGROUND
        )
        .graph_mode(common.BigValueGraphMode.AREA if mappings is None else common.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .justify_mode(common.BigValueJustifyMode.AUTO)
        .orientation(common.VizOrientation.AUTO)
        .thresholds(thresholds(*steps))
    )
    if mappings:
        builder = builder.mappings(
            [
                models.ValueMap(
                    options={
                        value: models.ValueMappingResult(text=text, color=color, index=i)
                        for i, (value, (text, color)) in enumerate(sorted(mappings.items()))
                    }
                )
            ]
        )
    if decimals is not None:
        builder = builder.decimals(decimals)
    return panel(builder, title, description, unit, targets)


def table_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    transformations: Sequence[models.DataTransformerConfig] = (),
    sort_by: str | None = None,
    sort_desc: bool = False,
) -> PanelBuilder:
    builder = table.Panel().show_header(True).cell_height(common.TableCellHeight.SM)
    if sort_by is not None:
        builder = builder.sort_by(
            [common_builders.TableSortByFieldState().display_name(sort_by).desc(sort_desc)]
        )
    for transformation in transformations:
        builder = builder.with_transformation(transformation)
    return panel(builder, title, description, unit, targets)


def organize(
    exclude: Sequence[str] = (), rename: dict[str, str] | None = None
) -> models.DataTransformerConfig:
    return models.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(exclude, True),
            "indexByName": {},
            "renameByName": dict(rename or {}),
        },
    )


def bargauge_panel(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    orientation: common.VizOrientation = common.VizOrientation.HORIZONTAL,
    steps: Sequence[tuple[float | None, str]] = (GREEN,),
    decimals: int | None = None,
) -> PanelBuilder:
    builder = (
        bargauge.Panel()
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(orientation)
        .show_unfilled(True)
        .thresholds(thresholds(*steps))
        .min(0)
    )
    if decimals is not None:
        builder = builder.decimals(decimals)
    return panel(builder, title, description, unit, targets)


def heatmap_panel(
    title: str, description: str, unit: str, targets: Sequence[prometheus.Dataquery], *, y_unit: str
) -> PanelBuilder:
    """A heatmap of pre-bucketed data (Prometheus histogram buckets queried with format=heatmap)."""
    builder = (
        heatmap.Panel()
        .calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_models.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap_models.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
            .fill("dark-orange")
            .reverse(False)
        )
        .y_axis(heatmap.YAxisConfig().unit(y_unit).decimals(2))
        .cell_values(heatmap.CellValues().unit(unit))
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
        .show_value(common.VisibilityMode.NEVER)
        .show_legend()
        .show_tooltip()
        .hide_y_histogram()
    )
    return panel(builder, title, description, unit, targets)


class Grid:
    """Places panels row by row on Grafana's 24-column grid and numbers them 1, 2, ... in order, so ids
    and positions are stable as long as the panel order is."""

    def __init__(self) -> None:
        self.y = 0
        self.panels: list[PanelBuilder] = []

    def row(self, height: int, *cells: tuple[int, PanelBuilder]) -> Grid:
        x = 0
        for width, builder in cells:
            if x + width > GRID_WIDTH:
                raise ValueError(f"row at y={self.y} is wider than {GRID_WIDTH} columns")
            builder.id(len(self.panels) + 1).grid_pos(models.GridPos(h=height, w=width, x=x, y=self.y))
            self.panels.append(builder)
            x += width
        self.y += height
        return self


def new_dashboard(uid: str, title: str, description: str, tag: str, grid: Grid) -> dict[str, Any]:
    builder = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags([FOLDER, tag])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard_builders.DashboardLink("rtml dashboards")
            .type(models.DashboardLinkType.DASHBOARDS)
            .tags([FOLDER])
            .as_dropdown(True)
            .keep_time(True)
            .include_vars(False)
            .target_blank(False)
        )
    )
    for panel_builder in grid.panels:
        builder = builder.with_panel(panel_builder)
    result: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    return result


# --- the dashboards ------------------------------------------------------------------------------


def _score_latency(quantile: float) -> str:
    return (
        f"histogram_quantile({quantile}, sum by (le) "
        '(rate(bentoml_service_request_duration_seconds_bucket{endpoint="/score"}[5m])))'
    )


def api_dashboard() -> dict[str, Any]:
    """Scoring API: traffic, latency, errors and fail-open/fail-closed behaviour of the BentoML service."""
    requests = f"rate(bentoml_service_request_total{{{SCORE_ROUTES}}}[5m])"
    errors = f'rate(bentoml_service_request_total{{{SCORE_ROUTES},http_response_code=~"5.."}}[5m])'
    # `or vector(0)` / `or ... * 0`: 0 rather than no data while there has never been an error
    degraded_share = (
        "(sum(rate(rtml_scoring_degraded_total[5m])) or vector(0))"
        " / sum(rate(rtml_scoring_decisions_total[5m]))"
    )
    grid = (
        Grid()
        .row(
            4,
            (
                6,
                stat_panel(
                    "Scoring requests/s",
                    "HTTP requests to /score and /score_batch per second over 5 minutes, all status codes "
                    "(BentoML's bentoml_service_request_total).",
                    "reqps",
                    [query(f"sum({requests})", "requests/s")],
                ),
            ),
            (
                6,
                stat_panel(
                    "/score p99 latency",
                    "99th percentile of /score request duration over 5 minutes (BentoML's "
                    "bentoml_service_request_duration_seconds). Orange above the 15 ms target at 100 "
                    "requests/s (docs/benchmarks.md), red above 50 ms.",
                    "s",
                    [query(_score_latency(0.99), "p99")],
                    steps=(GREEN, (0.015, "orange"), (0.05, "red")),
                ),
            ),
            (
                6,
                stat_panel(
                    "5xx error ratio",
                    "Share of /score and /score_batch requests answered with a 5xx status over 5 minutes "
                    "(503s included: Redis down with fail-closed, or no model loaded).",
                    "percentunit",
                    [query(f"(sum({errors}) or vector(0)) / sum({requests})", "5xx share")],
                    steps=(GREEN, (0.001, "orange"), (0.01, "red")),
                ),
            ),
            (
                6,
                stat_panel(
                    "Degraded share",
                    "Share of scored transactions that used default features because of the online store "
                    "(fail-open: Redis unavailable or a view missing): rtml_scoring_degraded_total / "
                    "rtml_scoring_decisions_total over 5 minutes.",
                    "percentunit",
                    [query(degraded_share, "degraded")],
                    steps=(GREEN, (0.001, "orange"), (0.05, "red")),
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Request rate by endpoint and status",
                    "HTTP requests per second by path and status code over 5 minutes (all routes the "
                    "service answers, health probes included; /metrics is not counted by BentoML).",
                    "reqps",
                    [
                        query(
                            "sum by (endpoint, http_response_code) (rate(bentoml_service_request_total[5m]))",
                            "{{endpoint}} {{http_response_code}}",
                        )
                    ],
                ),
            ),
            (
                12,
                timeseries_panel(
                    "/score latency quantiles",
                    "p50, p95 and p99 of /score request duration over 5 minutes, from BentoML's request "
                    "duration histogram (whole HTTP request, as the client sees it minus the network).",
                    "s",
                    [
                        query(_score_latency(0.5), "p50"),
                        query(_score_latency(0.95), "p95"),
                        query(_score_latency(0.99), "p99"),
                    ],
                ),
            ),
        )
        .row(
            8,
            (
                8,
                timeseries_panel(
                    "5xx error ratio by endpoint",
                    "Share of requests answered with a 5xx status, per scoring route, over 5 minutes.",
                    "percentunit",
                    [
                        query(
                            f"(sum by (endpoint) ({errors}) or sum by (endpoint) ({requests}) * 0)"
                            f" / sum by (endpoint) ({requests})",
                            "{{endpoint}}",
                        )
                    ],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Degraded share by reason (fail-open)",
                    "Share of scored transactions scored with default features because of the online store, "
                    "by reason: redis_unavailable (Redis down or the circuit breaker open) or view_missing "
                    "(a view's pointer gone: Redis restarted or flushed). rtml_scoring_degraded_total / "
                    "rtml_scoring_decisions_total, 5 minutes.",
                    "percentunit",
                    [
                        query(
                            "sum by (reason) (rate(rtml_scoring_degraded_total[5m]))"
                            " / scalar(sum(rate(rtml_scoring_decisions_total[5m])))",
                            "{{reason}}",
                        )
                    ],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Stage latency p99",
                    "99th percentile per scoring stage over 5 minutes (rtml_scoring_stage_seconds): "
                    "feature_lookup is the Redis round trip, inference the request features plus the model.",
                    "s",
                    [
                        query(
                            "histogram_quantile(0.99, sum by (stage, le) "
                            "(rate(rtml_scoring_stage_seconds_bucket[5m])))",
                            "{{stage}}",
                        )
                    ],
                ),
            ),
        )
        .row(
            8,
            (
                8,
                timeseries_panel(
                    "In-progress requests",
                    "Requests being handled right now, by path (BentoML's "
                    "bentoml_service_request_in_progress, summed over workers).",
                    "short",
                    [query("sum by (endpoint) (bentoml_service_request_in_progress)", "{{endpoint}}")],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Unavailable (503) by reason",
                    "Transactions per second refused with 503 over 5 minutes "
                    "(rtml_scoring_unavailable_total): reason=redis (Redis down, fail-closed), view_missing "
                    "(a view's pointer gone, fail-closed), no_model (no model version loaded) or queue_full "
                    "(more transactions waiting than RTML_SERVING_MAX_QUEUE_ROWS: overloaded).",
                    "cps",
                    [query("sum by (reason) (rate(rtml_scoring_unavailable_total[5m]))", "{{reason}}")],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Prediction log",
                    "Prediction-log rows per second over 5 minutes: written to monitoring.predictions, "
                    "spilled to local disk while PostgreSQL is unavailable or slow, drained from disk once "
                    "it is back, and dropped (lost: spill full, queue full) "
                    "(rtml_predictions_{written,spilled,drained,dropped}_total). Drops leave gaps in live "
                    "model monitoring.",
                    "cps",
                    [
                        query(f"sum(rate(rtml_predictions_{outcome}_total[5m]))", outcome)
                        for outcome in ("written", "spilled", "drained", "dropped")
                    ],
                ),
            ),
        )
        .row(
            8,
            (
                6,
                stat_panel(
                    "Redis circuit breaker",
                    "Scoring workers whose circuit breaker on the online read is open "
                    "(rtml_scoring_redis_breaker_open): Redis did not answer, so reads are answered without "
                    "it (fail-open: degraded; fail-closed: 503) until a background probe gets an answer.",
                    "short",
                    [query("sum(rtml_scoring_redis_breaker_open)", "open workers")],
                    steps=(GREEN, (1, "red")),
                    decimals=0,
                ),
            ),
            (
                6,
                timeseries_panel(
                    "Breaker transitions",
                    "Transitions of the online read's circuit breaker per 5 minutes, by the state entered "
                    "(rtml_scoring_redis_breaker_transitions_total): each open is a Redis timeout or "
                    "connection error, each close a probe that got an answer.",
                    "short",
                    [
                        query(
                            "sum by (state) (increase(rtml_scoring_redis_breaker_transitions_total[5m]))",
                            "{{state}}",
                        )
                    ],
                    bars=True,
                ),
            ),
            (
                6,
                timeseries_panel(
                    "Missing features by cause",
                    "Share of scored transactions with an entity scored with defaults, by entity and cause, "
                    "over 5 minutes (rtml_scoring_features_missing_total / rtml_scoring_decisions_total): "
                    "unknown_entity is a normal trickle; view_missing means the store lost a view (alert "
                    "OnlineFeaturesMissing); redis_unavailable that Redis did not answer (ScoringDegraded).",
                    "percentunit",
                    [
                        query(
                            "sum by (entity, cause) (rate(rtml_scoring_features_missing_total[5m]))"
                            " / scalar(sum(rate(rtml_scoring_decisions_total[5m])))",
                            "{{entity}} {{cause}}",
                        )
                    ],
                ),
            ),
            (
                6,
                timeseries_panel(
                    "Abandoned requests",
                    "Scoring requests per second not scored because they were abandoned: the client "
                    "disconnected before its body was read or while the request waited for a batch, or the "
                    "request timed out (rtml_scoring_abandoned_total), over 5 minutes.",
                    "reqps",
                    [query("sum(rate(rtml_scoring_abandoned_total[5m]))", "abandoned")],
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Stream publishing",
                    "Events of scored transactions per second over 5 minutes, appended to the transaction "
                    "stream by the scorer's background publisher (published) or lost (dropped: its queue "
                    "full while Redis was slow or away, still queued at shutdown, or refused by Redis) "
                    "(rtml_stream_events_{published,dropped}_total). Drops are transactions the speed "
                    "layer never sees (and, with RTML_TRANSACTIONS_FEED=stream, never landed).",
                    "cps",
                    [
                        query(f"sum(rate(rtml_stream_events_{outcome}_total[5m]))", outcome)
                        for outcome in ("published", "dropped")
                    ],
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Speed layer reads by result",
                    "Share of scored transactions by the speed layer's answer, over 5 minutes "
                    "(rtml_speed_layer_reads_total / its sum): merged (customer features exact at the "
                    "transaction's time: the hourly snapshot plus the stream's events), beyond_horizon (no "
                    "snapshot pushed within its horizon: the hourly refresh is late; batch values), "
                    "not_exact (no snapshot yet; batch values), disabled (RTML_SPEED_LAYER_ENABLED=false).",
                    "percentunit",
                    [
                        query(
                            "sum by (result) (rate(rtml_speed_layer_reads_total[5m]))"
                            " / scalar(sum(rate(rtml_speed_layer_reads_total[5m])))",
                            "{{result}}",
                        )
                    ],
                ),
            ),
        )
    )
    return new_dashboard(
        "rtml-api",
        "rtml / Scoring API",
        "The BentoML fraud-scoring service: traffic, latency, errors, fail-open/fail-closed behaviour.",
        "api",
        grid,
    )


def model_dashboard() -> dict[str, Any]:
    """Model: what is served, what it returns, and how it performs live and in training."""
    decisions = "sum(rate(rtml_scoring_decisions_total[5m]))"
    grid = (
        Grid()
        .row(
            5,
            (
                6,
                stat_panel(
                    "Served model version",
                    "Model version(s) with rtml_scoring_model_info == 1; the value is the number of "
                    "workers serving it. Two versions at once mean a swap is under way or a worker lags.",
                    "none",
                    [
                        query(
                            "count by (model_name, model_version) (rtml_scoring_model_info == 1)",
                            "{{model_name}} v{{model_version}}",
                        )
                    ],
                    text_mode=common.BigValueTextMode.VALUE_AND_NAME,
                    decimals=0,
                ),
            ),
            (
                6,
                stat_panel(
                    "Model swaps (24h)",
                    "Model versions swapped in after a registry change over the last 24 hours, all workers "
                    "(rtml_scoring_model_swaps_total).",
                    "short",
                    [query("sum(increase(rtml_scoring_model_swaps_total[24h]))", "swaps")],
                    decimals=0,
                ),
            ),
            (
                6,
                stat_panel(
                    "Mean fraud score",
                    "Mean fraud probability returned over 5 minutes (rtml_scoring_score sum / count). A "
                    "shift with unchanged traffic is a sign of prediction drift.",
                    "percentunit",
                    [
                        query(
                            "sum(rate(rtml_scoring_score_sum[5m])) / sum(rate(rtml_scoring_score_count[5m]))",
                            "mean score",
                        )
                    ],
                ),
            ),
            (
                6,
                stat_panel(
                    "Labelled predictions (live window)",
                    "Predictions with a label in the live-performance window "
                    "(rtml_live_labelled_predictions): the sample size behind the live metrics below.",
                    "short",
                    [
                        query(
                            "max by (model_version, window) (rtml_live_labelled_predictions)",
                            "v{{model_version}} ({{window}})",
                        )
                    ],
                    decimals=0,
                ),
            ),
        )
        .row(
            8,
            (
                12,
                table_panel(
                    "Served model per worker",
                    "Model name, version, source (registry alias, bento model, ...) and scoring path "
                    "(compiled, or sklearn when the model could not be compiled: slower) served, with the "
                    "number of workers serving each (rtml_scoring_model_info == 1).",
                    "none",
                    [
                        query(
                            "count by (model_name, model_version, source, path)"
                            " (rtml_scoring_model_info == 1)",
                            instant=True,
                            fmt="table",
                        )
                    ],
                    transformations=[organize(["Time"], {"Value": "workers"})],
                    sort_by="model_version",
                    sort_desc=True,
                ),
            ),
            (
                12,
                table_panel(
                    "Training metrics of registered versions",
                    "Evaluation figures of each registered model version (rtml_training_metric), e.g. "
                    "test_roc_auc and test_pr_auc.",
                    "none",
                    [
                        query(
                            "max by (model_name, model_version, metric) (rtml_training_metric)",
                            instant=True,
                            fmt="table",
                        )
                    ],
                    transformations=[organize(["Time"], {"Value": "value"})],
                    sort_by="model_version",
                    sort_desc=True,
                ),
            ),
        )
        .row(
            8,
            (
                12,
                heatmap_panel(
                    "Score distribution",
                    "Transactions per fraud-probability bucket per 5 minutes (rtml_scoring_score histogram "
                    "buckets; the y axis is the bucket's upper bound).",
                    "short",
                    [
                        query(
                            "sum by (le) (increase(rtml_scoring_score_bucket[5m]))",
                            "{{le}}",
                            fmt="heatmap",
                        )
                    ],
                    y_unit="none",
                ),
            ),
            (
                12,
                bargauge_panel(
                    "Score distribution (last hour)",
                    "Transactions per fraud-probability bucket over the last hour, as of the end of the "
                    "time range (rtml_scoring_score buckets, de-cumulated by Grafana's heatmap format; each "
                    "bar is labelled with its bucket's upper bound).",
                    "short",
                    [
                        query(
                            "sum by (le) (increase(rtml_scoring_score_bucket[1h]))",
                            "{{le}}",
                            fmt="heatmap",
                        )
                    ],
                    orientation=common.VizOrientation.VERTICAL,
                    decimals=0,
                ),
            ),
        )
        .row(
            8,
            (
                8,
                timeseries_panel(
                    "Decision mix",
                    "Decisions returned per second by decision (approve, review, decline) over 5 minutes "
                    "(rtml_scoring_decisions_total), stacked.",
                    "cps",
                    [query("sum by (decision) (rate(rtml_scoring_decisions_total[5m]))", "{{decision}}")],
                    stack=True,
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Scored transactions by model version",
                    "Transactions scored per second by the model version that scored them, over 5 minutes: "
                    "shows when a swap took effect on each worker.",
                    "cps",
                    [
                        query(
                            "sum by (model_version) (rate(rtml_scoring_decisions_total[5m]))",
                            "v{{model_version}}",
                        )
                    ],
                    stack=True,
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Missing-feature share by entity",
                    "Share of scored transactions whose entity (customer, merchant) had no online features "
                    "and was scored with defaults: rtml_scoring_features_missing_total / "
                    "rtml_scoring_decisions_total over 5 minutes.",
                    "percentunit",
                    [
                        query(
                            "sum by (entity) (rate(rtml_scoring_features_missing_total[5m]))"
                            f" / ignoring (entity) group_left {decisions}",
                            "{{entity}}",
                        )
                    ],
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Live model performance",
                    "The served model on labelled predictions (rtml_live_model_metric): ROC AUC, PR AUC, "
                    "precision and recall per model version and window.",
                    "none",
                    [
                        query(
                            "max by (model_version, metric, window) (rtml_live_model_metric)",
                            "{{metric}} v{{model_version}} ({{window}})",
                        )
                    ],
                    points=True,
                    max_val=1,
                    decimals=3,
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Live vs training ROC AUC",
                    "Live ROC AUC of each model version (rtml_live_model_metric, metric=roc_auc) against the "
                    "test ROC AUC recorded at training (rtml_training_metric, metric=test_roc_auc) of the "
                    "version(s) served now. A widening gap is model decay.",
                    "none",
                    [
                        query(
                            'max by (model_version) (rtml_live_model_metric{metric="roc_auc"})',
                            "live v{{model_version}}",
                        ),
                        query(
                            'max by (model_version) (rtml_training_metric{metric="test_roc_auc"})'
                            " and on (model_version) (rtml_scoring_model_info == 1)",
                            "training v{{model_version}}",
                        ),
                    ],
                    points=True,
                    max_val=1,
                    decimals=3,
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Challenger vs production (live)",
                    "The staged version (role=challenger) and production on the same labelled requests "
                    "of the comparison window (rtml_challenger_metric, asset challenger_comparison, daily): "
                    "PR AUC (the verdict's metric) and recall at production's decline rate (the "
                    "challenger's threshold set to decline the same share of requests).",
                    "none",
                    [
                        query(
                            "max by (role, model_version, metric)"
                            ' (rtml_challenger_metric{metric=~"pr_auc|recall_at_decline_rate"})',
                            "{{role}} v{{model_version}} {{metric}}",
                        )
                    ],
                    points=True,
                    max_val=1,
                    decimals=3,
                ),
            ),
            (
                6,
                stat_panel(
                    "Challenger verdict (live)",
                    "Whether the staged version is worse live than production on PR AUC "
                    "(rtml_challenger_worse: 1 worse, 0 better); no value while there are too few labelled "
                    "requests (RTML_CHALLENGER_MIN_LABELLED). `rtml promote` warns about a worse one.",
                    "none",
                    [query("max by (model_version) (rtml_challenger_worse)", "v{{model_version}}")],
                    mappings={"0": ("better", "green"), "1": ("worse", "red")},
                    text_mode=common.BigValueTextMode.VALUE_AND_NAME,
                ),
            ),
            (
                6,
                stat_panel(
                    "Challenger sample and agreement",
                    "Labelled requests behind the comparison (rtml_challenger_labelled_requests) and the "
                    "share of all compared requests both versions decided alike "
                    "(rtml_challenger_decision_agreement, as a fraction).",
                    "none",
                    [
                        query(
                            "max by (model_version) (rtml_challenger_labelled_requests)",
                            "labelled v{{model_version}}",
                        ),
                        query(
                            "max by (model_version) (rtml_challenger_decision_agreement)",
                            "agreement v{{model_version}}",
                        ),
                    ],
                    text_mode=common.BigValueTextMode.VALUE_AND_NAME,
                ),
            ),
        )
        .row(
            8,
            (
                24,
                timeseries_panel(
                    "Shadow scoring of the staged version",
                    "Requests per second the staged version scored after production answered (scored), "
                    "could not score (errors: the shadow model raised) and never scored (dropped: its "
                    "queue full, RTML_SERVING_SHADOW_QUEUE_MAX) (rtml_scoring_shadow_*_total). Shadow "
                    "scores feed the challenger comparison; production's answers never depend on them.",
                    "reqps",
                    [
                        query(f"sum(rate(rtml_scoring_shadow_{outcome}_total[5m]))", outcome)
                        for outcome in ("scored", "errors", "dropped")
                    ],
                ),
            ),
        )
    )
    return new_dashboard(
        "rtml-model",
        "rtml / Model",
        "The served fraud model: version, swaps, score distribution, decisions, live and training metrics, "
        "and the staged version against it on live requests.",
        "model",
        grid,
    )


def pipeline_dashboard() -> dict[str, Any]:
    """Data pipeline: the figures Dagster assets push to the Pushgateway (rtml.monitoring.metrics)."""
    failure = "rtml_pipeline_run_failure_timestamp_seconds"
    success = "rtml_pipeline_run_success_timestamp_seconds"
    grid = (
        Grid()
        .row(
            5,
            (
                6,
                stat_panel(
                    "Jobs whose last run failed",
                    "Jobs whose last failure is newer than their last success (or that never succeeded), "
                    f"from {failure} and {success}.",
                    "short",
                    [
                        query(
                            # failures and successes are separate Pushgateway groups: match on the job only
                            f"count((max by (dagster_job) ({failure}) > max by (dagster_job) ({success})) "
                            f"or (max by (dagster_job) ({failure}) unless max by (dagster_job) ({success}))) "
                            "or vector(0)",
                            "failing jobs",
                        )
                    ],
                    steps=(GREEN, (1, "red")),
                    decimals=0,
                ),
            ),
            (
                6,
                stat_panel(
                    "Drift detected",
                    "Per drift report (features, predictions): DRIFT when the latest report's drifted share "
                    "is above the threshold (rtml_drift_detected).",
                    "none",
                    [query("max by (report) (rtml_drift_detected)", "{{report}}")],
                    mappings={"0": ("no drift", "green"), "1": ("DRIFT", "red")},
                    text_mode=common.BigValueTextMode.VALUE_AND_NAME,
                ),
            ),
            (
                6,
                stat_panel(
                    "Oldest asset success",
                    "Time since the least recently successful asset last materialized "
                    "(time() - rtml_pipeline_last_success_timestamp_seconds). Orange after 2 hours "
                    "(hourly partitions), red after 25 hours (daily partitions).",
                    "s",
                    [query("time() - min(rtml_pipeline_last_success_timestamp_seconds)", "oldest")],
                    steps=(GREEN, (7200, "orange"), (90000, "red")),
                ),
            ),
            (
                6,
                stat_panel(
                    "Worst feature freshness lag",
                    "Largest lag over feature views and stores: now minus the newest event time the view's "
                    f"features include ({FRESHNESS}). Orange above 2 hours (the online-staleness alert).",
                    "s",
                    [query(f"max({FRESHNESS})", "max lag")],
                    steps=(GREEN, (7200, "orange"), (86400, "red")),
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Rows per partition: loaded and quarantined",
                    "Rows of each asset's last materialization (one hourly partition for the transaction "
                    "assets) by kind, loaded or quarantined (rtml_pipeline_rows).",
                    "short",
                    [query("sum by (asset, kind) (rtml_pipeline_rows)", "{{asset}} {{kind}}")],
                    points=True,
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Quarantine share",
                    "Quarantined / (loaded + quarantined) rows of each asset's last materialization "
                    "(rtml_pipeline_quarantine_share).",
                    "percentunit",
                    [query("max by (asset) (rtml_pipeline_quarantine_share)", "{{asset}}")],
                    points=True,
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Feature freshness lag",
                    "Per feature view and store (offline, online): now minus the newest event time the "
                    f"view's features include ({FRESHNESS}, what the recording rule "
                    "rtml_feature_freshness_lag_seconds computes). It keeps growing when pushes stop.",
                    "s",
                    [query(f"max by (view, store) ({FRESHNESS})", "{{view}} {{store}}")],
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Drift share",
                    "Share of drifted columns in the latest drift report, per report (rtml_drift_share); "
                    "rtml_drift_detected (stat above) flags it against the threshold.",
                    "percentunit",
                    [query("max by (report) (rtml_drift_share)", "{{report}}")],
                    points=True,
                    max_val=1,
                ),
            ),
        )
        .row(
            9,
            (
                12,
                table_panel(
                    "Per-feature drift score",
                    "Evidently's drift score per column of the latest report (rtml_drift_feature_score): a "
                    "p-value (low = drift) or a distance (high = drift), per the column's test.",
                    "none",
                    [
                        query(
                            "max by (report, feature) (rtml_drift_feature_score)",
                            instant=True,
                            fmt="table",
                        )
                    ],
                    transformations=[organize(["Time"], {"Value": "score"})],
                    sort_by="feature",
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Run duration per asset",
                    "Duration of each asset's last materialization (rtml_pipeline_run_duration_seconds).",
                    "s",
                    [query("max by (asset) (rtml_pipeline_run_duration_seconds)", "{{asset}}")],
                    points=True,
                ),
            ),
        )
        .row(
            8,
            (
                12,
                bargauge_panel(
                    "Time since last success per asset",
                    "time() - rtml_pipeline_last_success_timestamp_seconds per asset. Orange after 2 hours "
                    "(hourly partitions), red after 25 hours (daily partitions).",
                    "s",
                    [
                        query(
                            "time() - max by (asset) (rtml_pipeline_last_success_timestamp_seconds)",
                            "{{asset}}",
                            instant=True,
                        )
                    ],
                    steps=(GREEN, (7200, "orange"), (90000, "red")),
                ),
            ),
            (
                12,
                table_panel(
                    "Last run failure and success per job",
                    f"When a run of each job last failed ({failure}) and last succeeded ({success}), "
                    "with the labels the pipeline pushed them with.",
                    "dateTimeAsIso",
                    [
                        query(f"max by (dagster_job) ({failure}) * 1000", instant=True, fmt="table"),
                        query(f"max by (dagster_job) ({success}) * 1000", instant=True, fmt="table"),
                    ],
                    transformations=[
                        models.DataTransformerConfig(id_val="merge", options={}),
                        organize(["Time"], {"Value #A": "last failure", "Value #B": "last success"}),
                    ],
                    sort_by="last failure",
                    sort_desc=True,
                ),
            ),
        )
        # the speed layer's stream workers (`rtml stream run`, scraped): every worker reports the group's lag
        .row(
            8,
            (
                8,
                timeseries_panel(
                    "Stream consumer lag (age)",
                    "Age of the oldest transaction event the stream workers' group has not applied yet "
                    "(max of rtml_stream_consumer_lag_seconds over the workers, which all report the "
                    "group's). StreamConsumerLagHigh fires above 60 s for 2 min.",
                    "s",
                    [query("max(rtml_stream_consumer_lag_seconds)", "oldest unapplied event")],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Stream consumer lag (events)",
                    "Events of the stream the workers' group has not acknowledged (never delivered + "
                    "pending; max of rtml_stream_consumer_lag_events over the workers).",
                    "short",
                    [query("max(rtml_stream_consumer_lag_events)", "unapplied events")],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Stream events by outcome",
                    "Events/s the stream workers processed, by outcome "
                    "(rtml_stream_events_processed_total): applied to the customer state, duplicate "
                    "(transaction id seen before), late (before the batch watermark: the batch layer's), "
                    "malformed (not an event; acknowledged and skipped).",
                    "ops",
                    [
                        query(
                            "sum by (outcome) (rate(rtml_stream_events_processed_total[5m]))",
                            "{{outcome}}",
                        )
                    ],
                    stack=True,
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Stream freshness p50 / p99",
                    "Event time to the event written in the speed layer's state, per applied event "
                    "(rtml_stream_freshness_seconds), over 5 min. Target: p99 at most 1 s.",
                    "s",
                    [
                        query(
                            f"histogram_quantile({q}, sum by (le) "
                            "(rate(rtml_stream_freshness_seconds_bucket[5m])))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.99)
                    ],
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Stream batch time p50 / p99",
                    "Time a worker takes per batch: parse, read the watermark, apply and acknowledge "
                    "(rtml_stream_batch_seconds), over 5 min.",
                    "s",
                    [
                        query(
                            f"histogram_quantile({q}, sum by (le) "
                            "(rate(rtml_stream_batch_seconds_bucket[5m])))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.99)
                    ],
                ),
            ),
        )
        # the lander (`rtml stream land`, scraped as stream-lander; only where RTML_TRANSACTIONS_FEED=stream)
        .row(
            8,
            (
                6,
                timeseries_panel(
                    "Lander lag (age)",
                    "Age of the oldest transaction event the lander's group has not landed in "
                    "raw.transactions yet (max of rtml_stream_lander_lag_seconds over the landers). "
                    "StreamLanderLagHigh fires above 5 min for 5 min. Only where the stream feeds "
                    "raw.transactions (RTML_TRANSACTIONS_FEED=stream).",
                    "s",
                    [query("max(rtml_stream_lander_lag_seconds)", "oldest unlanded event")],
                ),
            ),
            (
                6,
                timeseries_panel(
                    "Lander lag (events)",
                    "Events of the stream the lander's group has not acknowledged (never delivered + "
                    "pending; max of rtml_stream_lander_lag_events over the landers).",
                    "short",
                    [query("max(rtml_stream_lander_lag_events)", "unlanded events")],
                ),
            ),
            (
                6,
                timeseries_panel(
                    "Lander events by outcome",
                    "Events/s the lander landed, by outcome (rtml_stream_lander_events_total): loaded into "
                    "raw.transactions, quarantined by the loader's rules, duplicate (transaction id loaded "
                    "already: skipped), malformed (not an event: quarantined as event_malformed).",
                    "ops",
                    [query("sum by (outcome) (rate(rtml_stream_lander_events_total[5m]))", "{{outcome}}")],
                    stack=True,
                ),
            ),
            (
                6,
                timeseries_panel(
                    "Lander micro-batches",
                    "Micro-batches/s by result (rtml_stream_lander_batches_total): committed (loaded and "
                    "acknowledged) or failed (rolled back, not acknowledged: landed again on the next "
                    "attempt; a database outage).",
                    "ops",
                    [query("sum by (result) (rate(rtml_stream_lander_batches_total[5m]))", "{{result}}")],
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "Lander freshness p50 / p99",
                    "Event time to the micro-batch's commit in PostgreSQL, per event committed "
                    "(rtml_stream_lander_freshness_seconds), over 5 min: about the batch interval "
                    "(RTML_STREAM_LANDER_BATCH_MS) plus one load when the lander keeps up.",
                    "s",
                    [
                        query(
                            f"histogram_quantile({q}, sum by (le) "
                            "(rate(rtml_stream_lander_freshness_seconds_bucket[5m])))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.99)
                    ],
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Lander batch time p50 / p99",
                    "Time to land one committed micro-batch: parse, look up ids, load through the validated "
                    "loader, commit and acknowledge (rtml_stream_lander_batch_seconds), over 5 min.",
                    "s",
                    [
                        query(
                            f"histogram_quantile({q}, sum by (le) "
                            "(rate(rtml_stream_lander_batch_seconds_bucket[5m])))",
                            f"p{round(q * 100)}",
                        )
                        for q in (0.5, 0.99)
                    ],
                ),
            ),
        )
    )
    return new_dashboard(
        "rtml-pipeline",
        "rtml / Data pipeline",
        "Dagster asset figures pushed to the Pushgateway: rows and quarantine, feature freshness, drift, "
        "run durations and failures; the speed layer's stream workers and the stream's lander: lag, "
        "outcomes, freshness.",
        "pipeline",
        grid,
    )


def infrastructure_dashboard() -> dict[str, Any]:
    """Infrastructure: the machine (node exporter), Redis and PostgreSQL exporters, scrape health."""
    hits = f"sum by (datname) (rate(pg_stat_database_blks_hit{{{PG_DATABASES}}}[5m]))"
    reads = f"sum by (datname) (rate(pg_stat_database_blks_read{{{PG_DATABASES}}}[5m]))"
    up_down = {"0": ("DOWN", "red"), "1": ("UP", "green")}
    grid = (
        Grid()
        .row(
            4,
            (
                4,
                stat_panel(
                    "Redis up",
                    "Whether the Redis exporter reaches Redis (redis_up), per exporter instance.",
                    "none",
                    [query("max by (instance) (redis_up)", "{{instance}}")],
                    mappings=up_down,
                ),
            ),
            (
                4,
                stat_panel(
                    "PostgreSQL up",
                    "Whether the PostgreSQL exporter reaches PostgreSQL (pg_up), per exporter instance.",
                    "none",
                    [query("max by (instance) (pg_up)", "{{instance}}")],
                    mappings=up_down,
                ),
            ),
            (
                4,
                stat_panel(
                    "Targets down",
                    "Scrape targets Prometheus failed to scrape at the last attempt (up == 0).",
                    "short",
                    [query("count(up == 0) or vector(0)", "down")],
                    steps=(GREEN, (1, "red")),
                    decimals=0,
                ),
            ),
            (
                4,
                stat_panel(
                    "CPU busy",
                    "Share of CPU time not idle over 5 minutes, all CPUs of all nodes "
                    "(node_cpu_seconds_total).",
                    "percentunit",
                    [query('1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5m]))', "busy")],
                    steps=(GREEN, (0.7, "orange"), (0.9, "red")),
                ),
            ),
            (
                4,
                stat_panel(
                    "Memory in use",
                    "1 - MemAvailable / MemTotal over all nodes (node_memory_*_bytes).",
                    "percentunit",
                    [
                        query(
                            "1 - sum(node_memory_MemAvailable_bytes) / sum(node_memory_MemTotal_bytes)",
                            "in use",
                        )
                    ],
                    steps=(GREEN, (0.8, "orange"), (0.9, "red")),
                ),
            ),
            (
                4,
                stat_panel(
                    "PostgreSQL connections used",
                    "Backends over all databases / max_connections (pg_stat_database_numbackends, "
                    "pg_settings_max_connections).",
                    "percentunit",
                    [
                        query(
                            "sum by (instance) (pg_stat_database_numbackends)"
                            " / max by (instance) (pg_settings_max_connections)",
                            "{{instance}}",
                        )
                    ],
                    steps=(GREEN, (0.7, "orange"), (0.9, "red")),
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "CPU by mode",
                    "Share of each node's CPU time per mode (user, system, iowait, ...; idle left out) over "
                    "5 minutes, stacked (node_cpu_seconds_total).",
                    "percentunit",
                    [
                        query(
                            'sum by (instance, mode) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))'
                            " / on (instance) group_left"
                            ' count by (instance) (node_cpu_seconds_total{mode="idle"})',
                            "{{instance}} {{mode}}",
                        )
                    ],
                    stack=True,
                ),
            ),
            (
                12,
                timeseries_panel(
                    "Memory in use by node",
                    "1 - MemAvailable / MemTotal per node (node_memory_MemAvailable_bytes, "
                    "node_memory_MemTotal_bytes).",
                    "percentunit",
                    [
                        query(
                            "1 - node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes",
                            "{{instance}}",
                        )
                    ],
                    max_val=1,
                ),
            ),
        )
        .row(
            8,
            (
                8,
                timeseries_panel(
                    "Redis memory",
                    "Memory used by Redis (redis_memory_used_bytes), mostly the online store's feature "
                    "hashes; it can roughly double during a full push into a new namespace.",
                    "bytes",
                    [query("redis_memory_used_bytes", "{{instance}}")],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Redis connected clients",
                    "Client connections to Redis (redis_connected_clients): the scoring workers, the "
                    "online-store writer, the exporter.",
                    "short",
                    [query("redis_connected_clients", "{{instance}}")],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "Redis commands/s",
                    "Commands processed per second over 5 minutes (redis_commands_processed_total).",
                    "ops",
                    [query("sum by (instance) (rate(redis_commands_processed_total[5m]))", "{{instance}}")],
                ),
            ),
        )
        .row(
            8,
            (
                8,
                timeseries_panel(
                    "Redis keys",
                    "Keys over all Redis databases (redis_db_keys): the online store's feature hashes.",
                    "short",
                    [query("sum by (instance) (redis_db_keys)", "{{instance}}")],
                ),
            ),
            (
                8,
                timeseries_panel(
                    "PostgreSQL backends by database",
                    "Connections per database (pg_stat_database_numbackends; template databases left out).",
                    "short",
                    [
                        query(
                            f"sum by (datname) (pg_stat_database_numbackends{{{PG_DATABASES}}})",
                            "{{datname}}",
                        )
                    ],
                    stack=True,
                ),
            ),
            (
                8,
                timeseries_panel(
                    "PostgreSQL commits/s by database",
                    "Transactions committed per second per database over 5 minutes "
                    "(pg_stat_database_xact_commit).",
                    "ops",
                    [
                        query(
                            f"sum by (datname) (rate(pg_stat_database_xact_commit{{{PG_DATABASES}}}[5m]))",
                            "{{datname}}",
                        )
                    ],
                ),
            ),
        )
        .row(
            8,
            (
                12,
                timeseries_panel(
                    "PostgreSQL cache hit ratio",
                    "Share of block reads served from shared buffers per database over 5 minutes: "
                    "blks_hit / (blks_hit + blks_read) (pg_stat_database_*). No value while a database "
                    "reads no blocks.",
                    "percentunit",
                    [query(f"{hits} / ({hits} + {reads})", "{{datname}}")],
                    max_val=1,
                ),
            ),
            (
                12,
                stat_panel(
                    "Scrape target health",
                    "Every target Prometheus scrapes, UP or DOWN at the last scrape (up).",
                    "none",
                    [query("up", "{{job}} {{instance}}")],
                    mappings=up_down,
                    text_mode=common.BigValueTextMode.VALUE_AND_NAME,
                ),
            ),
        )
    )
    return new_dashboard(
        "rtml-infrastructure",
        "rtml / Infrastructure",
        "The machine (node exporter), Redis and PostgreSQL (their exporters), and Prometheus' scrape "
        "targets.",
        "infrastructure",
        grid,
    )


DASHBOARDS = (api_dashboard, model_dashboard, pipeline_dashboard, infrastructure_dashboard)


# --- output --------------------------------------------------------------------------------------


def render(dashboard: dict[str, Any]) -> str:
    """The committed form: sorted keys, indent 2, trailing newline."""
    return json.dumps(dashboard, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name (``<uid>.json``) -> JSON text of every dashboard."""
    files: dict[str, str] = {}
    for build in DASHBOARDS:
        dashboard = build()
        files[f"{dashboard['uid']}.json"] = render(dashboard)
    return files


def panel_queries(directory: Path | str | None = None) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) of every target of every panel, read from the committed JSON
    files in ``directory`` (default: ``monitoring/grafana/dashboards``), in file and panel order."""
    queries: list[tuple[str, str, str]] = []
    for path in sorted(Path(directory or DASHBOARDS_DIR).glob("*.json")):
        dashboard = json.loads(path.read_text())
        for item in dashboard.get("panels") or []:
            for target in item.get("targets") or []:
                if target.get("expr"):
                    queries.append((dashboard["uid"], item.get("title", ""), target["expr"]))
    return queries


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the rtml Grafana dashboards (JSON).")
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR, help="output folder")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files are not up to date")
    args = parser.parse_args(argv)
    files = generate()
    out: Path = args.out
    stale = sorted(
        name
        for name in {*files, *(p.name for p in out.glob("*.json"))}
        if not (out / name).is_file() or name not in files or (out / name).read_text() != files[name]
    )
    if args.check:
        for name in stale:
            print(f"out of date: {out / name}", file=sys.stderr)
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        if name in files:
            (out / name).write_text(files[name])
            print(f"wrote {out / name}")
        else:
            (out / name).unlink()
            print(f"removed {out / name} (no such dashboard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
