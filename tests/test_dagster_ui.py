"""A person's view: the Dagster UI served by the local stack shows the raw assets in the asset graph."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rtml.stack import dagster_processes
from rtml.stack.local import StackInfo
from rtml.stack.processes import free_port
from tests.browser import chromium_page, chromium_path, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def dagster_ui(stack: StackInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    chromium_path()  # skip early, before starting the webserver, if there is no browser
    port = free_port()
    env = dagster_processes.dagster_env(stack.dagster_home, stack.database_url, stack.redis_url)
    webserver = dagster_processes.start_webserver(env, port, tmp_path_factory.mktemp("logs"))
    try:
        url = f"http://127.0.0.1:{port}"
        dagster_processes.wait_for_http(f"{url}/server_info", webserver)
        yield url
    finally:
        dagster_processes.stop([webserver])


def test_asset_graph_shows_transactions_raw(dagster_ui: str) -> None:
    with chromium_page() as page:
        # The ingestion group's lineage: the global graph starts with groups collapsed.
        page.goto(
            f"{dagster_ui}/locations/rtml.definitions/asset-groups/ingestion", wait_until="domcontentloaded"
        )
        node = page.get_by_text("transactions_raw", exact=True).first
        node.wait_for(state="visible", timeout=60_000)
        skip = page.get_by_role("button", name="Skip")  # first-visit newsletter dialog
        if skip.count():
            skip.click()
        page.wait_for_timeout(1000)  # let the graph finish laying out before the picture
        screenshot(page, "dagster-asset-graph.png")
        assert page.get_by_text("labels_raw", exact=True).first.is_visible()
        # Lineage into dbt: the staging model reading raw.transactions hangs off the raw asset.
        assert page.get_by_text("stg_transactions", exact=True).first.is_visible()


def test_a_scenario_switch_shows_on_the_assets_events_page(dagster_ui: str, stack: StackInfo) -> None:
    """`rtml scenario start` records the switch as an observation of transactions_raw: the asset's
    Events tab lists it with the scenario (then `stop` records the end)."""
    from typer.testing import CliRunner

    from rtml.cli import app
    from rtml.config import get_settings
    from rtml.sources.scenarios import timeline_path

    path = timeline_path(get_settings().services)
    try:
        started = CliRunner().invoke(app, ["scenario", "start", "merchant_mix_shift"])
        assert started.exit_code == 0 and "recorded as an observation" in started.output, started.output
        stopped = CliRunner().invoke(app, ["scenario", "stop"])
        assert stopped.exit_code == 0 and "recorded as an observation" in stopped.output, stopped.output
    finally:
        path.unlink(missing_ok=True)  # the session's other tests generate without it
    with chromium_page() as page:
        page.goto(f"{dagster_ui}/assets/transactions_raw?view=events", wait_until="domcontentloaded")
        event = page.get_by_text("merchant_mix_shift").first
        event.wait_for(state="visible", timeout=60_000)
        skip = page.get_by_role("button", name="Skip")
        if skip.count():
            skip.click()
        page.wait_for_timeout(1000)
        screenshot(page, "dagster-scenario-switch.png")
        # The newest event is the stop: an observation with the switch's description and metadata.
        assert page.get_by_text("Observed", exact=True).first.is_visible()
        assert page.get_by_text("drift scenario merchant_mix_shift stopped").first.is_visible()
        assert page.get_by_text("active_scenarios", exact=True).first.is_visible()
