"""Notifications: every notice is a row of ``monitoring.notifications``, always, and a POST of
Slack-compatible JSON (``text`` plus ``blocks``) to ``RTML_ALERT_WEBHOOK_URL`` when one is set.

``notify`` returns as soon as the row is written: the POST runs on a background thread of its own, so a
sensor or a run never waits for a slow or failing webhook. Connection errors, timeouts, HTTP 429 and 5xx
are retried with exponential back-off (``notify_attempts``, ``notify_backoff_s``); any other HTTP error
is final (retrying a bad request or a wrong URL cannot help). Every attempt updates the row
(``attempts``, ``delivered``, ``error``). At interpreter exit, deliveries still in progress get up to
``notify_exit_wait_s``; what is cut short says so in ``error``. ``Notification.wait`` blocks for one.
The webhook URL is a secret (a Slack-style URL holds its token): errors and logs name only its scheme and
host (``webhook_label``).
"""

from __future__ import annotations

import atexit
import http.client
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.types.json import Jsonb

from rtml import ddl
from rtml.config import Settings

log = logging.getLogger(__name__)

TABLE = "monitoring.notifications"

DDL = """
create schema if not exists monitoring;
create table if not exists monitoring.notifications (
    id          bigint generated always as identity primary key,
    created_at  timestamptz not null default now(),
    kind        text not null,
    title       text not null,
    text        text not null,
    fields      jsonb not null default '{}',
    delivered   boolean not null default false,
    attempts    integer not null default 0,
    error       text
);
create index if not exists notifications_kind_created_idx on monitoring.notifications (kind, created_at);
"""

NO_WEBHOOK = "not sent: no webhook configured (RTML_ALERT_WEBHOOK_URL)"

# Slack's limits: header text 150 characters, section text 3000, a field 2000, 10 fields per section.
_HEADER_MAX, _TEXT_MAX, _FIELD_MAX, _FIELDS_PER_SECTION = 150, 3000, 2000, 10


class NotificationError(RuntimeError):
    """A notification that cannot even be recorded; the message says what to set."""


@dataclass(eq=False)  # identity: a notification is one row, and is kept in a set while in flight
class Notification:
    id: int
    kind: str
    title: str
    text: str
    fields: dict[str, Any]
    created_at: datetime
    webhook_url: str | None = field(repr=False)  # a secret (see webhook_label)
    delivered: bool = False
    attempts: int = 0
    error: str | None = None
    _finished: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """Delivered, given up, or nothing to deliver."""
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the delivery has finished (at most ``timeout`` seconds); True if it has."""
        return self._finished.wait(timeout)


def ensure_table(database_url: str) -> None:
    """Create ``monitoring.notifications`` (idempotent; concurrent callers are serialised)."""
    ddl.ensure(database_url, DDL, lock=f"rtml.{TABLE}")


def notify(
    kind: str,
    title: str,
    text: str,
    fields: Mapping[str, Any],
    settings: Settings,
    *,
    database_url: str | None = None,
) -> Notification:
    """Record a notice and, when a webhook is configured, start its delivery in the background.

    ``database_url`` defaults to ``settings.database_url``; ``fields`` are short facts (job, run id,
    version, ...) shown as a table in Slack and stored as JSON."""
    url = database_url or settings.services.database_url
    if not url:
        raise NotificationError(
            f"cannot record notification {title!r}: no database (set RTML_DATABASE_URL or pass database_url)"
        )
    facts = {str(key): _jsonable(value) for key, value in fields.items()}
    webhook = settings.monitoring.alert_webhook_url
    ensure_table(url)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f"insert into {TABLE} (kind, title, text, fields, error) values (%s, %s, %s, %s, %s)"
            " returning id, created_at",
            (kind, title, text, Jsonb(facts), None if webhook else NO_WEBHOOK),
        ).fetchone()
    assert row is not None
    notification = Notification(row[0], kind, title, text, facts, row[1], webhook)
    log.info("notification %s [%s] %s: %s", notification.id, kind, title, text)
    if webhook is None:
        notification.error = NO_WEBHOOK
        notification._finished.set()
        return notification
    _start_delivery(notification, url, settings)
    return notification


def slack_payload(notification: Notification) -> dict[str, Any]:
    """Slack-compatible webhook JSON: ``text`` (the fallback shown in alerts) and ``blocks``."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(notification.title, _HEADER_MAX)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(notification.text, _TEXT_MAX)}},
    ]
    facts = [
        {"type": "mrkdwn", "text": _cut(f"*{key}*\n{_display(value)}", _FIELD_MAX)}
        for key, value in notification.fields.items()
    ]
    for first in range(0, len(facts), _FIELDS_PER_SECTION):
        blocks.append({"type": "section", "fields": facts[first : first + _FIELDS_PER_SECTION]})
    context = f"rtml · {notification.kind} · #{notification.id} · {notification.created_at.isoformat()}"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": _cut(f"{notification.title}: {notification.text}", _TEXT_MAX), "blocks": blocks}


# --- delivery ------------------------------------------------------------------------------------------
class _Attempt:
    """The outcome of one POST: ``error`` None when delivered; ``retry`` when trying again may help."""

    def __init__(self, error: str | None = None, retry: bool = False, wait: float | None = None):
        self.error, self.retry, self.wait = error, retry, wait


def webhook_label(url: str) -> str:
    """How a webhook is named in errors and logs: its scheme and host only. The rest is a secret (a
    Slack-style URL carries its token in the path; others in the query or the userinfo)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"  # host[:port], without the userinfo


def _post(webhook: str, body: bytes, timeout: float) -> _Attempt:
    label = webhook_label(webhook)
    request = urllib.request.Request(
        webhook, data=body, method="POST", headers={"Content-Type": "application/json; charset=utf-8"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
        return _Attempt()
    except urllib.error.HTTPError as exc:
        answer = exc.read(300).decode("utf-8", "replace").strip()
        retry = exc.code == 429 or exc.code >= 500
        wait = _retry_after(exc.headers.get("Retry-After")) if exc.code == 429 else None
        detail = f": {answer}" if answer else ""
        return _Attempt(f"webhook {label} answered HTTP {exc.code} {exc.reason}{detail}", retry, wait)
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, DNS, timeout
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return _Attempt(f"webhook {label} unreachable: {reason}", retry=True)
    except (ValueError, http.client.InvalidURL):  # their messages quote the URL: not repeated here
        return _Attempt(f"webhook {label} is not a valid http(s) URL (RTML_ALERT_WEBHOOK_URL)")


def _deliver(notification: Notification, database_url: str, settings: Settings) -> None:
    assert notification.webhook_url is not None
    body = json.dumps(slack_payload(notification)).encode()
    attempts = max(1, settings.automation.notify_attempts)
    try:
        for number in range(1, attempts + 1):
            outcome = _post(notification.webhook_url, body, settings.automation.notify_timeout_s)
            final = outcome.error is None or not outcome.retry or number == attempts
            error = outcome.error
            if error is not None and final and number > 1:
                error = f"{error} (gave up after {number} attempts)"
            notification.attempts, notification.delivered, notification.error = (
                number,
                outcome.error is None,
                error,
            )
            _update(database_url, notification)
            if final:
                break
            backoff = settings.automation.notify_backoff_s * 2 ** (number - 1)
            time.sleep(max(backoff, outcome.wait or 0.0))
        if notification.error:
            log.warning("notification %s not delivered: %s", notification.id, notification.error)
    except Exception as exc:  # the database went away mid-delivery: the thread must not die silently
        log.exception("notification %s: delivery bookkeeping failed: %s", notification.id, exc)
    finally:
        notification._finished.set()
        with _lock:
            _pending.pop(notification, None)


def _update(database_url: str, notification: Notification) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            f"update {TABLE} set delivered = %s, attempts = %s, error = %s where id = %s",
            (notification.delivered, notification.attempts, notification.error, notification.id),
        )


_lock = threading.Lock()
_pending: dict[Notification, tuple[str, float]] = {}  # in flight: (database URL, exit wait)
_exit_hook_registered = threading.Event()


def _start_delivery(notification: Notification, database_url: str, settings: Settings) -> None:
    with _lock:
        _pending[notification] = (database_url, settings.automation.notify_exit_wait_s)
        if not _exit_hook_registered.is_set():
            atexit.register(_wait_at_exit)
            _exit_hook_registered.set()
    # A daemon thread: a process that exits does not hang on a dead webhook (the exit hook bounds it).
    threading.Thread(
        target=_deliver,
        args=(notification, database_url, settings),
        name=f"rtml-notify-{notification.id}",
        daemon=True,
    ).start()


def _wait_at_exit() -> None:
    with _lock:
        pending = dict(_pending)
    deadline = time.monotonic() + max((wait for _, wait in pending.values()), default=0.0)
    for notification in pending:
        notification.wait(max(0.0, deadline - time.monotonic()))
    for notification, (database_url, _) in pending.items():
        if notification.finished:
            continue
        notification.error = (
            f"{notification.error or 'in progress'}; cut short when the process exited "
            f"after {notification.attempts} attempt(s)"
        )
        try:
            _update(database_url, notification)
        except Exception as exc:  # exiting anyway: say so, do not raise from an exit hook
            log.warning("notification %s: could not record the cut-short delivery: %s", notification.id, exc)


# --- formatting ----------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Field values as JSON: numbers, booleans, strings, lists and dicts as they are; others as text."""
    return json.loads(json.dumps(value, default=str))


def _display(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _retry_after(header: str | None) -> float | None:
    """A 429's ``Retry-After`` in seconds (capped: a retry an hour later is no retry)."""
    try:
        return min(float(header), 60.0) if header else None
    except ValueError:
        return None
