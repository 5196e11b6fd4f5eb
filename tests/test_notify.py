"""Notifications (``rtml.monitoring.notify``) against the session's PostgreSQL and local HTTP receivers:
the row is always written; a webhook gets Slack-compatible JSON; a failing webhook is retried with
back-off and recorded as failed; the caller never waits for the delivery, and a process that exits
waits for it only as long as ``notify_exit_wait_s``."""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

from rtml.config import AutomationSettings, MonitoringSettings, ServicesSettings, Settings
from rtml.monitoring.notify import NO_WEBHOOK, NotificationError, notify, webhook_label
from rtml.stack.processes import free_port
from tests.monitoring_stack import webhook_receiver

FAST = {"notify_backoff_s": 0.2, "notify_timeout_s": 2.0}


def settings(database_url: str, webhook: str | None = None, **automation: Any) -> Settings:
    return Settings(
        services=ServicesSettings(database_url=database_url),
        monitoring=MonitoringSettings(alert_webhook_url=webhook),
        automation=AutomationSettings(**{**FAST, **automation}),
    )


def row(database_url: str, notification_id: int) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute(
            "select kind, title, text, fields, delivered, attempts, error"
            " from monitoring.notifications where id = %s",
            (notification_id,),
        )
        values = cursor.fetchone()
        assert values is not None, f"no row {notification_id}"
        return dict(zip([c.name for c in cursor.description or []], values, strict=True))


@contextmanager
def failing_webhook(status: int, delay: float = 0.0) -> Iterator[tuple[str, list[float]]]:
    """A receiver that answers every POST with ``status`` (after ``delay`` s); yields its URL and the
    times the POSTs arrived."""
    arrivals: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            arrivals.append(time.monotonic())
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(delay)
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"webhook is down")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", arrivals
    finally:
        server.shutdown()


def test_webhook_gets_slack_json_and_the_row_says_delivered(database_url: str) -> None:
    with webhook_receiver() as hook:
        sent = notify(
            "run_failure",
            "Run of ingestion_job failed",
            "transactions_raw: connection refused",
            {"job": "ingestion_job", "run_id": "abc123", "attempts": 3},
            settings(database_url, hook.url),
        )
        assert sent.wait(10) and sent.delivered and sent.attempts == 1 and sent.error is None
        [body] = hook.received
    assert body["text"] == "Run of ingestion_job failed: transactions_raw: connection refused"
    header, section, facts, context = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "Run of ingestion_job failed"}}
    assert section["text"] == {"type": "mrkdwn", "text": "transactions_raw: connection refused"}
    assert [field["text"] for field in facts["fields"]] == [
        "*job*\ningestion_job",
        "*run_id*\nabc123",
        "*attempts*\n3",
    ]
    assert context["type"] == "context" and f"#{sent.id}" in context["elements"][0]["text"]

    stored = row(database_url, sent.id)
    assert stored == {
        "kind": "run_failure",
        "title": "Run of ingestion_job failed",
        "text": "transactions_raw: connection refused",
        "fields": {"job": "ingestion_job", "run_id": "abc123", "attempts": 3},
        "delivered": True,
        "attempts": 1,
        "error": None,
    }


def test_a_failing_webhook_is_retried_with_backoff_then_recorded_as_failed(database_url: str) -> None:
    with failing_webhook(503) as (url, arrivals):
        began = time.monotonic()
        sent = notify("retraining", "v7 staged", "text", {}, settings(database_url, url, notify_attempts=3))
        returned = time.monotonic() - began
        assert sent.wait(15)
    assert returned < 0.5, "notify must not wait for the delivery"  # three attempts take >= 0.6 s
    assert len(arrivals) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps  # exponential back-off: 0.2 s, then 0.4 s
    stored = row(database_url, sent.id)
    assert stored["delivered"] is False and stored["attempts"] == 3
    assert stored["error"] == (
        f"webhook {webhook_label(url)} answered HTTP 503 Service Unavailable: webhook is down "
        "(gave up after 3 attempts)"
    )
    assert (sent.delivered, sent.attempts, sent.error) == (False, 3, stored["error"])


def test_a_client_error_is_final_and_an_unreachable_webhook_is_retried(database_url: str) -> None:
    with failing_webhook(404) as (url, arrivals):
        sent = notify("promotion", "v7 in production", "text", {}, settings(database_url, url))
        assert sent.wait(10)
    assert len(arrivals) == 1  # retrying a wrong URL cannot help
    assert (
        row(database_url, sent.id)["error"]
        == f"webhook {webhook_label(url)} answered HTTP 404 Not Found: webhook is down"
    )

    closed = f"http://127.0.0.1:{free_port()}/hook"
    sent = notify(
        "promotion", "v7 in production", "text", {}, settings(database_url, closed, notify_attempts=2)
    )
    assert sent.wait(10)
    stored = row(database_url, sent.id)
    assert stored["attempts"] == 2 and stored["delivered"] is False
    assert stored["error"].startswith(f"webhook {webhook_label(closed)} unreachable: ")
    assert stored["error"].endswith("(gave up after 2 attempts)")


def test_the_webhook_url_is_kept_out_of_the_table_and_the_logs(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Slack-style webhook URL is a secret (its path is the token): a failing delivery names only the
    webhook's host, in ``monitoring.notifications.error`` and in the log."""
    token = "s3cr3tT0ken"
    with failing_webhook(500) as (url, arrivals):
        base = url.removesuffix("/hook")
        secret_urls = [
            f"{base}/services/T0/B0/{token}",  # answers 500
            f"http://127.0.0.1:{free_port()}/hook?token={token}",  # unreachable
            f"{base.replace('http://', f'http://rtml:{token}@')}/hook",  # userinfo: urllib cannot send it
            f"http://127.0.0.1:port/services/T0/B0/{token}",  # not a valid URL
        ]
        with caplog.at_level(logging.DEBUG, logger="rtml.monitoring.notify"):
            sent = [
                notify("run_failure", "t", "x", {}, settings(database_url, hook, notify_attempts=2))
                for hook in secret_urls
            ]
            assert all(notification.wait(15) for notification in sent)
    assert len(arrivals) == 2  # the first one, twice
    errors = [row(database_url, notification.id)["error"] for notification in sent]
    assert errors[0] == (
        f"webhook {base}/… answered HTTP 500 Internal Server Error: webhook is down (gave up after 2 "
        "attempts)"
    )
    assert errors[1].startswith("webhook http://127.0.0.1:") and " unreachable: " in errors[1]
    assert errors[2].startswith(f"webhook {base}/… unreachable: ")  # urllib takes the userinfo for a host
    assert errors[3] == "webhook http://127.0.0.1:port/… is not a valid http(s) URL (RTML_ALERT_WEBHOOK_URL)"
    leaked = [text for text in [*errors, caplog.text, *map(repr, sent)] if "s3cr3tT0ken" in text]
    assert not leaked, leaked
    assert caplog.text.count("not delivered") == 4  # the failures are logged, without the token


def test_the_row_is_written_without_a_webhook(database_url: str) -> None:
    sent = notify(
        "data_freshness",
        "transactions_raw is stale",
        "no load for 3 hours",
        {"asset": "x"},
        settings(database_url),
    )
    assert sent.finished and not sent.delivered
    stored = row(database_url, sent.id)
    assert (stored["delivered"], stored["attempts"], stored["error"]) == (False, 0, NO_WEBHOOK)
    assert stored["fields"] == {"asset": "x"}


def test_without_a_database_the_error_says_what_to_set() -> None:
    with pytest.raises(NotificationError, match="set RTML_DATABASE_URL"):
        notify("x", "title", "text", {}, Settings(services=ServicesSettings(database_url=None)))


SCRIPT = """
import sys
from rtml.config import AutomationSettings, MonitoringSettings, ServicesSettings, Settings
from rtml.monitoring.notify import notify
settings = Settings(
    services=ServicesSettings(database_url=sys.argv[1]),
    monitoring=MonitoringSettings(alert_webhook_url=sys.argv[2]),
    automation=AutomationSettings(
        notify_exit_wait_s=float(sys.argv[3]), notify_timeout_s=10, notify_backoff_s=0.1
    ),
)
print(notify("exit", "exits at once", "text", {}, settings).id)
"""


def _notify_and_exit(database_url: str, webhook: str, exit_wait: float) -> tuple[int, float]:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, database_url, webhook, str(exit_wait)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1]), time.monotonic() - began


def test_a_process_that_exits_waits_for_its_deliveries_but_not_forever(database_url: str) -> None:
    with webhook_receiver() as hook:
        sent_id, _ = _notify_and_exit(database_url, hook.url, exit_wait=10)
        assert len(hook.received) == 1  # delivered before the interpreter ended
    assert row(database_url, sent_id)["delivered"] is True

    with failing_webhook(200, delay=8) as (url, _):  # a webhook that hangs longer than the exit wait
        sent_id, seconds = _notify_and_exit(database_url, url, exit_wait=1)
    assert seconds < 7, seconds
    stored = row(database_url, sent_id)
    assert stored["delivered"] is False
    assert stored["error"] == "in progress; cut short when the process exited after 0 attempt(s)"
