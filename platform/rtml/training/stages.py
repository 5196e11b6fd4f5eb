"""The DVC pipeline's stages (``dvc.yaml``): snapshot → train → evaluate, on the same code as the
Dagster training asset, but with files instead of MLflow in between, so ``dvc repro`` reproduces a
model from a committed ``dvc.lock`` without any server.

The snapshot stage builds its own data (:mod:`rtml.training.pinned_world`: the seeded simulator's pinned
window in a disposable embedded PostgreSQL); no stage reads the clock, the environment's ``RTML_*``
settings or a running stack, and every output is byte-stable, so a fresh clone reproduces the hashes of
the committed ``dvc.lock`` on any day.

Run by DVC as ``python -m rtml.training.stages <stage> ...``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import typer
from threadpoolctl import threadpool_limits

# Each stage is a process of its own: it imports only what it uses (scikit-learn and matplotlib cost the
# snapshot stage seconds, the embedded PostgreSQL and dbt glue cost train and evaluate as much).

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.command()
def snapshot(
    out: Path,
    start: datetime = typer.Option(..., help="First event time (inclusive, ISO 8601, UTC)."),
    end: datetime = typer.Option(..., help="Last event time (exclusive, ISO 8601, UTC)."),
    labels_as_of: datetime = typer.Option(
        ..., help="Labels known at this time (the training cut-off; ISO 8601, UTC)."
    ),
    seed: int = typer.Option(..., help="Simulator seed."),
    customers: int = typer.Option(..., help="Simulated card holders."),
    merchants: int = typer.Option(..., help="Simulated merchants."),
    transactions_per_day: int = typer.Option(..., help="Mean simulated transactions per day."),
    dirty_share: float = typer.Option(..., help="Share of deliberately invalid simulated rows."),
) -> None:
    """Simulate the pinned world into a disposable database and export its labelled training set."""
    from rtml.training.pinned_world import PinnedWorld, build_snapshot

    world = PinnedWorld(
        start=start,
        end=end,
        labels_as_of=labels_as_of,
        seed=seed,
        customers=customers,
        merchants=merchants,
        transactions_per_day=transactions_per_day,
        dirty_share=dirty_share,
    )
    taken = build_snapshot(world, out)
    typer.echo(f"{out}: {taken.rows} rows ({taken.fraud_rows} fraud), md5 {taken.md5}")


@app.command()
def train(
    snapshot_path: Path,
    out: Path,
    learning_rate: float = typer.Option(0.1),
    max_iter: int = typer.Option(100),
) -> None:
    """Fit the pipeline on the snapshot's train split; save it with skops."""
    from rtml.training.reproducible import dump_skops
    from rtml.training.snapshot import read_snapshot, snapshot_spec
    from rtml.training.train import fit

    spec = snapshot_spec(snapshot_path)  # the features the snapshot was built with, not target/'s
    with one_thread():
        fitted = fit(read_snapshot(snapshot_path, spec), spec, learning_rate=learning_rate, max_iter=max_iter)
    out.parent.mkdir(parents=True, exist_ok=True)
    dump_skops(fitted.pipeline, out)  # byte-stable: skops' own dump embeds times and memory ids
    typer.echo(f"{out}: trained on {int(fitted.metrics['train_rows'])} rows")


@app.command("evaluate")
def evaluate_model(snapshot_path: Path, model_path: Path, metrics_out: Path, plots_dir: Path) -> None:
    """Thresholds from validation, metrics on validation and test, ROC and PR curves of the test split
    (CSV for ``dvc plots``: text is byte-stable, a rendered PNG depends on the fonts of the host)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    from rtml.training import evaluate
    from rtml.training.dataset import split_by_time
    from rtml.training.loading import load_skops
    from rtml.training.reproducible import write_curve
    from rtml.training.snapshot import read_snapshot, snapshot_spec
    from rtml.training.train import prefixed, score

    spec = snapshot_spec(snapshot_path)
    data = split_by_time(read_snapshot(snapshot_path, spec), spec)
    model = load_skops(model_path)  # the project's trusted types only
    with one_thread():
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
    fprs, tprs, _ = roc_curve(data.test.y, test)
    write_curve(plots_dir / "roc_test.csv", ["false_positive_rate", "true_positive_rate"], fprs, tprs)
    precision, recall, _ = precision_recall_curve(data.test.y, test)
    write_curve(plots_dir / "pr_test.csv", ["recall", "precision"], recall, precision)
    typer.echo(f"test ROC AUC {metrics['test_roc_auc']:.4f}, PR AUC {metrics['test_pr_auc']:.4f}")


def one_thread() -> threadpool_limits:
    """OpenMP limited to one thread: the booster sums gradients in parallel, and a float sum's order
    (hence the model's last bits) would follow the host's core count."""
    return threadpool_limits(limits=1, user_api="openmp")


if __name__ == "__main__":
    app()
