"""The transaction stream: a Redis Stream of ``TransactionEvent`` entries, and its consumer-group reads.

Writing: ``publish`` appends events in one pipelined round trip (``XADD`` per event, fields from
``TransactionEvent.to_fields``) and trims by time on the way: ``MINID ~ <now - retention>`` drops entries
whose id (the Redis server's arrival time in milliseconds) is older than the retention. Time rather
than ``MAXLEN``: what consumers need is expressed in time (how long a lander or worker may be down and
still catch up; the speed layer's horizon), while the event rate swings several-fold between night and
the evening peak, so a length would keep hours at night and far less at the peak. ``~`` trims whole
internal nodes only: cheap on every append, and the stream keeps at most a node's worth beyond it.

Delivery is at least once: a publisher retrying a batch whose connection broke, a replay, or a
consumer reading again what it had not acknowledged may deliver an event twice. Consumers are
idempotent by ``transaction_id`` (the speed layer's state counts an id once; the lander never loads an
id twice).

Reading (stream workers, the lander): a consumer group per kind of consumer (each group sees every
entry; consumers of one group share them), ``XREADGROUP`` for new entries and for this consumer's own
unacknowledged ones (after a restart under the same name), ``XAUTOCLAIM`` for the pending entries of a
consumer that died, ``XACK`` once what an entry caused is durable. Nothing here imports BentoML or
Dagster.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from rtml.streaming.events import TransactionEvent

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
"""Redis away or hung: callers keep what they hold and try again."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: its id and raw fields (parse with ``TransactionEvent.from_fields``)."""

    id: str
    fields: dict[bytes, bytes]


def min_id(retention_s: float, now_ms: int | None = None) -> str:
    """The ``MINID`` that keeps entries of the last ``retention_s`` seconds."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return f"{max(0, now_ms - int(retention_s * 1000))}-0"


def publish(
    client: redis.Redis, key: str, events: Sequence[TransactionEvent], retention_s: float
) -> list[str]:
    """Append ``events`` in order (one pipelined round trip, not a transaction: a broken connection may
    leave a prefix appended; publishing the batch again appends it twice, which consumers count once).
    Returns the entry ids."""
    if not events:
        return []
    trim_to = min_id(retention_s)
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(key, event.to_fields(), minid=trim_to, approximate=True)  # type: ignore[arg-type]
    return [_text(entry_id) for entry_id in pipe.execute()]


def ensure_group(client: redis.Redis, key: str, group: str, start: str = "0") -> bool:
    """Create consumer group ``group`` (and the stream, if missing) reading from entry ``start`` ("0": all
    that is retained; "$": only what comes next). True if created, False if it existed (idempotent)."""
    try:
        client.xgroup_create(key, group, id=start, mkstream=True)
    except redis.exceptions.ResponseError as exc:
        if "BUSYGROUP" in str(exc):
            return False
        raise
    return True


def read_new(
    client: redis.Redis, key: str, group: str, consumer: str, count: int, block_ms: int | None
) -> list[Entry]:
    """Up to ``count`` entries never delivered to the group, now owned (pending) by ``consumer``;
    waits up to ``block_ms`` for the first one (None: no wait)."""
    return _entries(client.xreadgroup(group, consumer, {key: ">"}, count=count, block=block_ms))


def read_own_pending(client: redis.Redis, key: str, group: str, consumer: str, count: int) -> list[Entry]:
    """Entries delivered to ``consumer`` earlier and not acknowledged (a restart under the same name,
    a load that failed). Entries trimmed away meanwhile come back without fields and are left out."""
    return _entries(client.xreadgroup(group, consumer, {key: "0"}, count=count))


@dataclass(frozen=True)
class Claimed:
    entries: list[Entry]
    trimmed: list[str]
    """Ids that were pending but are no longer in the stream (trimmed by retention before anyone
    acknowledged them): Redis removed them from the pending list; their events are lost to this group."""
    next_start: str
    """Where the next ``claim_idle`` continues; "0-0" once the whole pending list was scanned."""


def claim_idle(
    client: redis.Redis,
    key: str,
    group: str,
    consumer: str,
    min_idle_ms: int,
    count: int,
    start: str = "0-0",
) -> Claimed:
    """Take over up to ``count`` pending entries idle for ``min_idle_ms`` or more (their consumer is
    taken to be dead): ``XAUTOCLAIM``, scanning the pending list from ``start``."""
    reply = client.xautoclaim(key, group, consumer, min_idle_ms, start_id=start, count=count)
    next_start, claimed = reply[0], reply[1]
    trimmed = reply[2] if len(reply) > 2 else []
    return Claimed(
        [Entry(_text(i), dict(f)) for i, f in claimed if f is not None],
        [_text(i) for i in trimmed],
        _text(next_start),
    )


def ack(client: redis.Redis, key: str, group: str, ids: Iterable[str]) -> int:
    """Acknowledge ``ids`` (removes them from the group's pending list); the number acknowledged."""
    ids = list(ids)
    return int(client.xack(key, group, *ids)) if ids else 0


def heartbeat_key(key: str, group: str, consumer: str) -> str:
    return f"{key}:heartbeat:{group}:{consumer}"


def heartbeat(client: redis.Redis, key: str, group: str, consumer: str, ttl_s: int = 86_400) -> None:
    """Record that ``consumer`` is running now. Not the consumer's ``idle`` time in ``XINFO CONSUMERS``:
    Redis before 7.2 resets it only when entries are delivered, so an idle stream looks like a dead
    consumer there."""
    client.set(heartbeat_key(key, group, consumer), int(time.time() * 1000), ex=ttl_s)


def heartbeat_age_s(client: redis.Redis, key: str, group: str, consumer: str) -> float | None:
    """Seconds since ``consumer`` last said it runs; None: never (or a day ago). Read from its heartbeat
    key alone: Redis 7.0 lists a consumer in ``XINFO CONSUMERS`` only once entries were delivered to it,
    so a lander waiting on an empty stream is not listed there yet."""
    beat = client.get(heartbeat_key(key, group, consumer))
    return None if beat is None else round(time.time() - int(beat) / 1000, 3)


def group_status(client: redis.Redis, key: str, group: str) -> dict[str, object] | None:
    """The group's ``lag`` (entries not yet delivered to it; None when Redis cannot tell), ``pending``
    (delivered, not acknowledged), and each consumer's pending entries, ``idle_ms`` (since entries were
    last delivered to it, on Redis before 7.2) and ``heartbeat_age_s`` (since it last said it runs;
    None: never, or a day ago). None when the stream or the group does not exist."""
    try:
        groups = client.xinfo_groups(key)
    except redis.exceptions.ResponseError:  # no such key
        return None
    found = [g for g in groups if _text(g["name"]) == group]
    if not found:
        return None
    consumers = client.xinfo_consumers(key, group)
    now_ms = int(time.time() * 1000)
    names = [_text(c["name"]) for c in consumers]
    beats = client.mget([heartbeat_key(key, group, name) for name in names]) if names else []
    return {
        "stream": key,
        "group": group,
        "length": client.xlen(key),
        "lag": found[0].get("lag"),
        "pending": found[0]["pending"],
        "consumers": {
            name: {
                "pending": c["pending"],
                "idle_ms": c["idle"],
                "heartbeat_age_s": None if beat is None else round((now_ms - int(beat)) / 1000, 3),
            }
            for name, c, beat in zip(names, consumers, beats, strict=True)
        },
    }


LAG_COUNT_CAP = 100_000
"""When Redis cannot tell a group's lag (entries deleted in between), it is counted up to this."""


def group_lag(client: redis.Redis, key: str, group: str) -> tuple[int, float]:
    """The group's entries not acknowledged yet (never delivered + pending) and the age in seconds of the
    oldest of them (from its entry id: its arrival in the stream; 0 when the group is caught up). Two or
    three commands: the stream workers and the lander measure it every second."""
    info: dict[str, Any] | None = next(
        (g for g in client.xinfo_groups(key) if _text(g["name"]) == group), None
    )
    if info is None:  # the stream was made again (a Redis restarted empty) and the group not yet
        raise redis.exceptions.ResponseError(f"NOGROUP no consumer group {group} on {key}")
    last_delivered = _text(info["last-delivered-id"])
    undelivered = info.get("lag")
    if undelivered is None:  # Redis cannot tell (entries deleted since): count them
        undelivered = len(client.xrange(key, f"({last_delivered}", "+", count=LAG_COUNT_CAP) or [])
    pending = int(info["pending"])
    oldest: str | None = None
    if pending:
        oldest = _text(client.xpending(key, group)["min"])
    elif undelivered:
        first: Any = client.xrange(key, f"({last_delivered}", "+", count=1)
        oldest = _text(first[0][0]) if first else None
    age = 0.0 if oldest is None else max(0.0, time.time() - int(oldest.split("-")[0]) / 1000)
    return pending + int(undelivered), age


def _entries(reply: object) -> list[Entry]:
    """XREADGROUP's reply (RESP2, redis-py's default) as entries, skipping deleted ones (no fields)."""
    out: list[Entry] = []
    for _key, items in reply or []:  # type: ignore[attr-defined]
        out.extend(Entry(_text(entry_id), dict(fields)) for entry_id, fields in items if fields)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def stream_gone(exc: redis.exceptions.ResponseError) -> bool:
    """Whether a reply says the stream or its group is gone (a Redis restarted without persistence, a
    flush, a deletion): ``NOGROUP``, "no such key", or, to a read blocked at that moment on Redis before
    7.2, "UNBLOCKED the stream key no longer exists". Consumers then create their group again."""
    text = str(exc)
    return "NOGROUP" in text or "no such key" in text or "no longer exists" in text
