"""The README's pictures of each UI of a running demo (Debian's Chromium through ``tests/browser.py``),
saved small into ``docs/images/``. ``benchmarks/time_to_value.py --screenshots`` runs it against the
demo it started, once the first live prediction is logged; by hand:

    .venv/bin/python docs/screenshots.py --dagster http://127.0.0.1:3000 --api http://127.0.0.1:3001 \\
        --mlflow http://127.0.0.1:5000 --docs http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.browser import chromium_page  # noqa: E402

IMAGES = ROOT / "docs" / "images"
WIDTH = 1000  # pixels: readable in the README, tens of kilobytes


def shoot(page: Any, url: str, ready: Callable[[Any], None], name: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    ready(page)
    page.wait_for_timeout(2000)  # let the page finish laying out (and its first-visit dialogs appear)
    for dialog in ("Skip", "Close"):  # Dagster's newsletter dialog; MLflow's assistant panel
        button = page.get_by_role("button", name=dialog, exact=True)
        if button.count() and button.first.is_visible():
            button.first.click()
            page.wait_for_timeout(500)
    path = IMAGES / name
    page.screenshot(path=str(path))
    with Image.open(path) as image:
        small = image.convert("RGB").resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    small.quantize(colors=128).save(path, optimize=True)
    print(f"{path.relative_to(ROOT)}  {path.stat().st_size // 1024} kB", flush=True)


def visible(text: str, timeout_ms: int = 60_000) -> Callable[[Any], None]:
    return lambda page: page.get_by_text(text, exact=False).first.wait_for(
        state="visible", timeout=timeout_ms
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("dagster", "api", "mlflow", "docs"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--model", default="fraud-detector")
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        shoot(page, f"{args.dagster}/runs", visible("rtml/bootstrap"), "demo-dagster-runs.png")
        shoot(
            page,
            f"{args.dagster}/locations/rtml.definitions/asset-groups/ingestion",
            visible("transactions_raw"),
            "demo-dagster-assets.png",
        )
        shoot(
            page,
            f"{args.dagster}/automation",
            visible("hourly_refresh_schedule"),
            "demo-dagster-automation.png",
        )
        shoot(page, f"{args.api}/", visible("/score"), "demo-scoring-api.png")
        shoot(page, f"{args.mlflow}/#/models/{args.model}", visible("production"), "demo-mlflow-model.png")
        shoot(
            page,
            f"{args.docs}/#!/model/model.rtml.customer_features",
            visible("distinct_merchants_24h"),
            "demo-dbt-docs.png",
        )


if __name__ == "__main__":
    main()
