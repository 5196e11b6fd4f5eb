"""The DVC pipeline's stages (``dvc.yaml``): snapshot → train → evaluate, on the same code as the
Dagster training asset, but with files instead of MLflow in between, so ``dvc repro`` reproduces a
model from a committed ``dvc.lock`` without any server but PostgreSQL (for the snapshot).

Run by DVC as ``python -m rtml.training.stages <stage> ...``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import skops.io
import typer

from rtml.config import get_settings
from rtml.services.stack import LocalStack
from rtml.training import evaluate
from rtml.training.dataset import feature_spec, split_by_time
from rtml.training.loading import load_skops
from rtml.training.snapshot import export_snapshot, read_snapshot
from rtml.training.train import fit, prefixed, score

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.command()
def snapshot(
    out: Path,
    start: datetime = typer.Option(..., help="First event time (inclusive, ISO 8601)."),
    end: datetime = typer.Option(..., help="Last event time (exclusive, ISO 8601)."),
) -> None:
    """Export the labelled training set of the window to Parquet."""
    settings = get_settings()
    database_url = settings.database_url or LocalStack(settings).info().database_url
    taken = export_snapshot(database_url, out, start, end)
    typer.echo(f"{out}: {taken.rows} rows ({taken.fraud_rows} fraud), md5 {taken.md5}")


@app.command()
def train(
    snapshot_path: Path,
    out: Path,
    learning_rate: float = typer.Option(0.1),
    max_iter: int = typer.Option(100),
) -> None:
    """Fit the pipeline on the snapshot's train split; save it with skops."""
    spec = feature_spec()
    fitted = fit(read_snapshot(snapshot_path, spec), spec, learning_rate=learning_rate, max_iter=max_iter)
    out.parent.mkdir(parents=True, exist_ok=True)
    skops.io.dump(fitted.pipeline, out)
    typer.echo(f"{out}: trained on {int(fitted.metrics['train_rows'])} rows")


@app.command("evaluate")
def evaluate_model(snapshot_path: Path, model_path: Path, metrics_out: Path, plots_dir: Path) -> None:
    """Thresholds from validation, metrics on validation and test, ROC and PR curves of the test split."""
    spec = feature_spec()
    data = split_by_time(read_snapshot(snapshot_path, spec), spec)
    model = load_skops(model_path)  # the project's trusted types only
    validation, test = score(model, data.validation.X), score(model, data.test.X)
    thresholds = evaluate.choose_thresholds(data.validation.y, validation)
    metrics = {
        **prefixed("validation", evaluate.metrics(data.validation.y, validation, thresholds)),
        **prefixed("test", evaluate.metrics(data.test.y, test, thresholds)),
        "threshold_review": thresholds.review,
        "threshold_decline": thresholds.decline,
    }
    metrics_out.parent.mkdir(parents=True, exist_ok=True)
    metrics_out.write_text(json.dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2) + "\n")
    plots_dir.mkdir(parents=True, exist_ok=True)
    evaluate.roc_figure(data.test.y, test).savefig(plots_dir / "roc_test.png")
    evaluate.pr_figure(data.test.y, test).savefig(plots_dir / "pr_test.png")
    typer.echo(f"test ROC AUC {metrics['test_roc_auc']:.4f}, PR AUC {metrics['test_pr_auc']:.4f}")


if __name__ == "__main__":
    app()
