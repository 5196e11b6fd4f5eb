"""A person's view: the Dagster UI served by the local stack shows the raw assets in the asset graph."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rtml.services import dagster_processes
from rtml.services.processes import free_port
from rtml.services.stack import StackInfo
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
