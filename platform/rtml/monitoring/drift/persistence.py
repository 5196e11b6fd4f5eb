"""The record of drift reports: the rows of ``monitoring.drift_reports`` and the ``rtml_drift_*`` gauges."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from rtml import ddl
from rtml.monitoring.drift.query import DriftError, Window
from rtml.monitoring.drift.report import ColumnDrift, DriftReport, DriftResult
from rtml.monitoring.metrics import Sample

TABLE = "monitoring.drift_reports"

DDL = """
create schema if not exists monitoring;
create table if not exists monitoring.drift_reports (
    report_id        text primary key,
    created_at       timestamptz not null,
    kind             text not null check (kind in ('features', 'predictions')),
    model_version    text,
    reference_start  timestamptz not null,
    reference_end    timestamptz not null,
    current_start    timestamptz not null,
    current_end      timestamptz not null,
    reference_rows   integer not null,
    current_rows     integer not null,
    drifted_share    double precision not null,
    threshold        double precision not null,
    detected         boolean not null,
    drifted_columns  text[] not null,
    columns          jsonb not null,
    html_path        text not null,
    seconds          double precision not null
);
create index if not exists drift_reports_kind_created_idx on monitoring.drift_reports (kind, created_at desc);
"""


def ensure_table(database_url: str) -> None:
    """Create ``monitoring.drift_reports`` (idempotent; concurrent creators are serialised)."""
    ddl.ensure(database_url, DDL, lock=f"rtml.{TABLE}")


def store(database_url: str, report: DriftReport) -> None:
    columns = {
        name: {"method": c.method, "threshold": c.threshold, "score": c.score, "drifted": c.drifted}
        for name, c in report.columns.items()
    }
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f"insert into {TABLE} (report_id, created_at, kind, model_version, reference_start,"
            " reference_end, current_start, current_end, reference_rows, current_rows, drifted_share,"
            " threshold, detected, drifted_columns, columns, html_path, seconds)"
            " values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
            (
                report.report_id,
                report.created_at,
                report.kind,
                report.model_version,
                report.reference.start,
                report.reference.end,
                report.current.start,
                report.current.end,
                report.reference_rows,
                report.current_rows,
                report.drifted_share,
                report.threshold,
                report.detected,
                report.drifted_columns,
                json.dumps({"columns": columns, "skipped": report.skipped}),
                str(report.html_path),
                report.seconds,
            ),
        )


def load_reports(database_url: str, report_ids: Iterable[str]) -> list[DriftReport]:
    """Recorded reports by id, in the order asked; unknown ids are an error."""
    ids = list(report_ids)
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        rows = conn.execute(f"select * from {TABLE} where report_id = any(%s)", (ids,)).fetchall()
    found = {row["report_id"]: row for row in rows}
    unknown = [report_id for report_id in ids if report_id not in found]
    if unknown:
        raise DriftError(f"no drift report(s) {unknown} in {TABLE}")
    return [_from_row(found[report_id]) for report_id in ids]


def _from_row(row: dict[str, Any]) -> DriftReport:
    payload = row["columns"]
    return DriftReport(
        report_id=row["report_id"],
        kind=row["kind"],
        created_at=row["created_at"],
        reference=Window(row["reference_start"], row["reference_end"]),
        current=Window(row["current_start"], row["current_end"]),
        reference_rows=row["reference_rows"],
        current_rows=row["current_rows"],
        columns={name: ColumnDrift(column=name, **values) for name, values in payload["columns"].items()},
        skipped=list(payload["skipped"]),
        drifted_share=row["drifted_share"],
        threshold=row["threshold"],
        detected=row["detected"],
        html_path=Path(row["html_path"]),
        seconds=row["seconds"],
        model_version=row["model_version"],
    )


def samples(result: DriftResult) -> list[Sample]:
    """The ``rtml_drift_*`` gauges of the run's reports (labels ``report`` = ``features``,
    ``features_tail`` (the hourly check's tail window) or ``predictions``, and ``feature``)."""
    out: list[Sample] = []
    for name, report in result.named_reports.items():
        labels = {"report": name}
        out.append(Sample("rtml_drift_share", report.drifted_share, labels))
        out.append(Sample("rtml_drift_detected", float(report.detected), labels))
        out += [
            Sample("rtml_drift_feature_score", column.score, {**labels, "feature": feature})
            for feature, column in report.columns.items()
        ]
    return out
