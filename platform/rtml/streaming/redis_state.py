"""The speed layer's state in Redis: one hash per customer holding the batch snapshot and the stream's
events since the watermark, so that applying an event, moving the watermark and reading are each
one key (one hash slot: the key carries the customer id as a ``{...}`` hash tag, as Redis Cluster needs
for a script's keys).

``{prefix}:speed:{<customer_id>}``  hash
    ``b``                  the customer's ``BatchSnapshot``, packed (``pack_snapshot``)
    ``w``                  the watermark W (µs): events before it are the batch layer's (an event
                           raises it to the newest snapshot's watermark, which the caller passes)
    ``e:<transaction_id>`` one stream event at or after W: ``<event_ts_us>|<merchant_id>|<cents>``
``{prefix}:speed:meta``            hash: ``as_of_us``, ``valid_until_us`` of the newest snapshot pushed
    (the snapshot of a customer without a row: no history before W)

Two Lua scripts keep the rules of ``state.py`` atomic per customer: APPLY (late before W, duplicate by
transaction id, else applied; the first arrival wins) and PUSH (a new snapshot and its watermark, and the
events it now holds dropped, in one step: a read never sees both). Separators: ids match
``^[A-Za-z0-9_.:-]{1,64}$`` (``rtml.sources.schema.ID_PATTERN``), so ``|``, ``,`` and ``=`` never occur
in them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

import redis

from rtml.streaming.events import TransactionEvent
from rtml.streaming.features import NotExact, customer_features_at
from rtml.streaming.snapshot import WINDOWS_US, BatchSnapshot
from rtml.streaming.state import CustomerStreamState, Outcome, StreamedEvent

APPLY_SCRIPT = """
-- KEYS[1]: the customer's hash. ARGV: transaction id, event time (us), merchant id, amount (cents),
-- the current watermark (for a customer whose hash holds none yet).
-- The watermark is the larger of the customer's and the newest snapshot's (an event before either is
-- the batch layer's).
local stored = tonumber(redis.call('HGET', KEYS[1], 'w') or '-1')
local w = tonumber(ARGV[5])
if stored >= w then w = stored else redis.call('HSET', KEYS[1], 'w', ARGV[5]) end
if tonumber(ARGV[2]) < w then return 'late' end
local added = redis.call('HSETNX', KEYS[1], 'e:' .. ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. ARGV[4])
if added == 0 then return 'duplicate' end
return 'applied'
"""

PUSH_SCRIPT = """
-- KEYS[1]: the customer's hash. ARGV: packed snapshot, its watermark (us).
-- Never goes back to an older snapshot; drops the stream events the new snapshot holds.
local w = tonumber(ARGV[2])
local old = redis.call('HGET', KEYS[1], 'w')
if old and tonumber(old) > w then return 0 end
redis.call('HSET', KEYS[1], 'b', ARGV[1], 'w', ARGV[2])
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'e:' then
    local ts = tonumber(string.match(fields[i + 1], '^(-?%d+)|'))
    if ts < w then redis.call('HDEL', KEYS[1], fields[i]) end
  end
end
return 1
"""

_WINDOWS = tuple(WINDOWS_US)


def pack_snapshot(s: BatchSnapshot) -> str:
    """``as_of|valid_until|counts|sums (cents)|night 7d|sum of squares (cents²)|last|edges|merchants 24h|
    known merchants`` (lists comma-separated; edges ``ts=cents``; merchants ``id=ts``)."""
    parts = [
        str(s.as_of_us),
        str(s.valid_until_us),
        ",".join(str(s.txn_count[w]) for w in _WINDOWS),
        ",".join(str(s.amount_cents[w]) for w in _WINDOWS),
        str(s.night_count_7d),
        str(s.amount_sumsq_30d),
        "" if s.last_txn_us is None else str(s.last_txn_us),
        ",".join(f"{ts}={c}" for ts, c in s.edge_events),
        ",".join(f"{m}={ts}" for m, ts in sorted(s.merchant_last_24h.items())),
        ",".join(sorted(s.known_merchant_ids)),
    ]
    return "|".join(parts)


def unpack_snapshot(customer_id: str, packed: str) -> BatchSnapshot:
    """``pack_snapshot``'s text as the snapshot (on every merged read: each part parsed in one pass)."""
    (as_of, valid_until, counts, sums, night, sumsq, last, edges, merchants, known) = packed.split("|")
    edge_items = edges.replace("=", ",").split(",") if edges else []
    merchant_items = merchants.replace("=", ",").split(",") if merchants else []
    return BatchSnapshot(
        customer_id=customer_id,
        as_of_us=int(as_of),
        valid_until_us=int(valid_until),
        txn_count=dict(zip(_WINDOWS, map(int, counts.split(",")), strict=True)),
        amount_cents=dict(zip(_WINDOWS, map(int, sums.split(",")), strict=True)),
        night_count_7d=int(night),
        amount_sumsq_30d=int(sumsq),
        edge_events=tuple(zip(map(int, edge_items[::2]), map(int, edge_items[1::2]), strict=True)),
        merchant_last_24h=dict(zip(merchant_items[::2], map(int, merchant_items[1::2]), strict=True)),
        last_txn_us=int(last) if last else None,
        known_merchant_ids=PackedIds(known),
    )


class PackedIds(Collection[str]):
    """Comma-separated ids as a read-only set: a membership test searches the text. A busy customer knows
    a few hundred merchants, and building their set cost more than the rest of a merged read; the read
    asks about one merchant."""

    __slots__ = ("_text",)

    def __init__(self, text: str) -> None:
        self._text = f",{text}," if text else ","

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str) and "," not in item and f",{item}," in self._text

    def __iter__(self) -> Iterator[str]:
        return iter(self._text[1:-1].split(",") if len(self._text) > 1 else ())

    def __len__(self) -> int:
        return self._text.count(",") - 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AbstractSet | PackedIds) and frozenset(self) == frozenset(other)


class SpeedStore:
    """The speed layer's Redis state (see the module docstring)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._apply = client.register_script(APPLY_SCRIPT)
        self._push = client.register_script(PUSH_SCRIPT)
        self._cluster = isinstance(client, redis.RedisCluster)
        if self._cluster:
            # a cluster pipeline sends EVALSHA without loading the script first: load it on every primary
            for script in (APPLY_SCRIPT, PUSH_SCRIPT):
                client.script_load(script)

    def key(self, customer_id: str) -> str:
        return f"{self.prefix}:speed:{{{customer_id}}}"

    @property
    def meta_key(self) -> str:
        return f"{self.prefix}:speed:meta"

    def push_snapshots(self, snapshots: Iterable[BatchSnapshot], as_of_us: int, valid_until_us: int) -> int:
        """Write a new batch snapshot (every customer's row, all at the watermark ``as_of_us``), then
        record it as the newest. Returns the customers written."""
        written = 0
        pipe = self.client.pipeline(transaction=False)
        for snapshot in snapshots:
            if snapshot.as_of_us != as_of_us:
                raise ValueError(
                    f"snapshot of {snapshot.customer_id} is as of {snapshot.as_of_us}, not {as_of_us}"
                )
            self._queue(pipe, self._push, self.key(snapshot.customer_id), [pack_snapshot(snapshot), as_of_us])
            written += 1
            if written % 1_000 == 0:
                pipe.execute()
        pipe.hset(self.meta_key, mapping={"as_of_us": as_of_us, "valid_until_us": valid_until_us})
        pipe.execute()
        return written

    def watermark(self) -> tuple[int, int] | None:
        """(as_of_us, valid_until_us) of the newest snapshot pushed; None before the first."""
        raw: Any = self.client.hmget(self.meta_key, ["as_of_us", "valid_until_us"])
        return None if raw[0] is None else (int(raw[0]), int(raw[1]))

    def apply(self, event: TransactionEvent, watermark_us: int) -> Outcome:
        """Apply one event idempotently (``watermark_us``: the newest snapshot's, for a customer whose
        hash holds none yet)."""
        return self.apply_many([event], watermark_us)[0]

    def apply_many(self, events: Sequence[TransactionEvent], watermark_us: int) -> list[Outcome]:
        """Apply events in one round trip (in order); the outcome of each."""
        pipe = self.client.pipeline(transaction=False)
        self.queue_apply(pipe, events, watermark_us)
        return self.outcomes(pipe.execute())

    def queue_apply(self, pipe: Any, events: Sequence[TransactionEvent], watermark_us: int) -> None:
        """Queue the APPLY of each event on ``pipe`` (the stream worker adds its ``XACK`` behind them, so
        both go in one round trip); ``outcomes`` reads the first ``len(events)`` replies."""
        for e in events:
            args: list[str | int] = [
                e.transaction_id,
                e.event_ts_us,
                e.merchant_id,
                e.amount_cents,
                watermark_us,
            ]
            self._queue(pipe, self._apply, self.key(e.customer_id), args)

    def _queue(self, pipe: Any, script: Any, key: str, args: Sequence[str | int]) -> None:
        """Queue one script call on ``pipe``. A cluster pipeline refuses ``Script`` objects (redis-py blocks
        its ``evalsha``): there the raw ``EVALSHA`` (routed by its key; the script was loaded on every
        primary in ``__init__``)."""
        if self._cluster:
            pipe.execute_command("EVALSHA", script.sha, 1, key, *args)
        else:
            script(keys=[key], args=args, client=pipe)

    @staticmethod
    def outcomes(replies: Iterable[Any]) -> list[Outcome]:
        return [Outcome(r.decode() if isinstance(r, bytes) else r) for r in replies]

    def read(
        self, customer_ids: Sequence[str]
    ) -> list[tuple[BatchSnapshot | None, CustomerStreamState | None]]:
        """Each customer's snapshot and stream state (None, None: nothing stored), one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for customer in customer_ids:
            pipe.hgetall(self.key(customer))
        return [self._decode(c, fields) for c, fields in zip(customer_ids, pipe.execute(), strict=True)]

    def features_at(
        self, customer_id: str, *, event_ts_us: int, merchant_id: str, amount: float
    ) -> dict[str, Any]:
        """``customer_features``' exact row for a transaction at ``event_ts_us`` (one round trip); raises
        ``NotExact`` (``BeyondHorizon`` past the snapshot's horizon; before the first snapshot push).
        The scorer reads the same within the online read's one script (``rtml.features.online``)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key(customer_id))
        pipe.hmget(self.meta_key, ["as_of_us", "valid_until_us"])
        fields, meta = pipe.execute()
        return exact_features(
            customer_id,
            {k.decode(): v.decode() for k, v in fields.items()},
            None if meta[0] is None else (int(meta[0]), int(meta[1])),
            event_ts_us=event_ts_us,
            merchant_id=merchant_id,
            amount=amount,
        )

    @staticmethod
    def _decode(
        customer: str, fields: dict[bytes, bytes]
    ) -> tuple[BatchSnapshot | None, CustomerStreamState | None]:
        return decode_state(customer, {k.decode(): v.decode() for k, v in fields.items()})

    def purge(self) -> int:
        """Delete every key of this prefix's speed layer (tests, benchmarks)."""
        keys = list(self.client.scan_iter(match=f"{self.prefix}:speed:*", count=10_000))
        return int(self.client.unlink(*keys)) if keys else 0


def decode_state(
    customer: str, fields: Mapping[str, str]
) -> tuple[BatchSnapshot | None, CustomerStreamState | None]:
    """A customer's hash (field → value) as its snapshot and stream state; (None, None): nothing stored."""
    if not fields:
        return None, None
    snapshot = unpack_snapshot(customer, fields["b"]) if "b" in fields else None
    events = {}
    for name, value in fields.items():
        if name.startswith("e:"):
            ts, merchant, cents = value.split("|")
            events[name[2:]] = StreamedEvent(int(ts), merchant, int(cents))
    return snapshot, CustomerStreamState(customer, int(fields["w"]), events)


def exact_features(
    customer: str,
    fields: Mapping[str, str],
    meta: tuple[int, int] | None,
    *,
    event_ts_us: int,
    merchant_id: str,
    amount: float,
) -> dict[str, Any]:
    """``customer_features``' exact row from the customer's hash and the newest snapshot's
    (as_of_us, valid_until_us) (None: no snapshot pushed yet); raises ``NotExact`` / ``BeyondHorizon``."""
    snapshot, state = decode_state(customer, fields)
    if snapshot is None:  # no history before the watermark
        if meta is None:
            raise NotExact("no batch snapshot was pushed yet")
        snapshot = BatchSnapshot.empty(customer, *meta)
    return customer_features_at(
        snapshot, state, event_ts_us=event_ts_us, merchant_id=merchant_id, amount=amount
    )
