"""``OnlineStore``: the online feature store's one entry point (reader and bulk writer).

    store = OnlineStore(redis_url, online=settings.online)  # registry from the dbt manifest
    feats = store.read("c000123", "m00042")           # one round trip
    feats = store.read_at("c000123", "m00042", event_ts=ts, amount=12.5)  # + the speed layer, if on
    store.push_from_postgres(database_url)            # *_latest tables → Redis
    store.push_speed_snapshot(database_url)           # customer_stream_snapshot → the speed layer

Redis connection and timeout errors propagate (``redis.exceptions.ConnectionError`` /
``TimeoutError``; on a cluster also ``ClusterError``): the scoring service decides between failing open
and closed. With ``redis_cluster`` the store works on a Redis Cluster (README, "Scaling out").
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rtml.config import OnlineSettings
from rtml.features.feature_registry import FeatureRegistry, get_registry
from rtml.features.online.keys import Keys
from rtml.features.online.reader import (
    RECORD_SEPARATOR,
    VALUE_SEPARATOR,
    OnlineFeatures,
    decode_entity,
    read_script,
)
from rtml.features.online.redis_wire import DirectConnection
from rtml.features.online.schema import OnlineView, online_views
from rtml.features.online.source import fetch_latest
from rtml.features.online.writer import OnlineWriter, PushResult
from rtml.features.request_features import EXACT_AT
from rtml.redis_client import connect, load_scripts
from rtml.streaming.events import from_us, to_us
from rtml.streaming.features import BeyondHorizon, NotExact
from rtml.streaming.redis_state import SpeedStore, exact_features
from rtml.streaming.snapshot import fetch_snapshots, snapshot_watermark

CUSTOMER_VIEW = "customer_features"
MERCHANT_VIEW = "merchant_features"
BULK_SOCKET_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SpeedPush:
    """What ``push_speed_snapshot`` wrote."""

    customers: int
    as_of: datetime | None
    """The snapshot's watermark W (None: no snapshot table or rows)."""
    valid_until: datetime | None
    seconds: float
    skipped: str | None = None
    """Why nothing was written (None: pushed)."""


class OnlineStore:
    def __init__(
        self,
        redis_url: str,
        registry: FeatureRegistry | None = None,
        *,
        online: OnlineSettings,
        cluster: bool = False,
    ) -> None:
        """``online``: key prefix, TTL of a push (0: never expire), the reader's socket timeout, the bulk
        writer's batch, the push guard and whether reads merge the speed layer.
        ``cluster``: ``redis_url`` is a node of a Redis Cluster (``ServicesSettings.redis_cluster``)."""
        self.redis_url = redis_url
        self.cluster = cluster
        self.registry = registry or get_registry()
        self.views: dict[str, OnlineView] = online_views(self.registry)
        self.customer_view = self.views[CUSTOMER_VIEW]
        self.merchant_view = self.views[MERCHANT_VIEW]
        self.keys = Keys(online.key_prefix)
        self.ttl_seconds: int | None = online.ttl_seconds or None
        timeout = online.redis_socket_timeout_ms / 1000
        self.client = connect(
            redis_url, cluster=self.cluster, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # bulk writes wait long for a busy server, but not forever for a dead one
        self._bulk_client = connect(redis_url, cluster=self.cluster, socket_timeout=BULK_SOCKET_TIMEOUT_S)
        self._batch_entities = online.push_batch_entities
        self.max_removal_share = online.max_removal_share
        self._script = self.client.register_script(read_script(self.customer_view, self.merchant_view))
        self._speed_script = self.client.register_script(
            read_script(self.customer_view, self.merchant_view, speed=True)
        )
        # on a cluster: one read script per view (a view's keys share its slot), pipelined
        views = (self.customer_view, self.merchant_view)
        self._view_scripts = [self.client.register_script(read_script(view)) for view in views]
        speed_store = SpeedStore(self.client, self.keys.prefix)
        self.speed: SpeedStore | None = speed_store if online.speed_layer_enabled else None
        self._read_lock = threading.Lock()
        self._read_connection: Any = None  # a redis-py Connection, made on the first read
        self._pointer_keys = [
            self.keys.pointer(view.name) for view in (self.customer_view, self.merchant_view)
        ]
        self._speed_keys = [*self._pointer_keys, speed_store.meta_key]
        if self.cluster:
            self._load_view_scripts()
        # probe(): no retries (redis-py retries 3 times by default), so a probe ends within one timeout
        self._probe_client = connect(
            redis_url,
            cluster=self.cluster,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    # --- reading --------------------------------------------------------------------------------
    def read(self, customer_id: str, merchant_id: str) -> OnlineFeatures:
        """The customer's and the merchant's features, in one round trip."""
        return self.read_many([(customer_id, merchant_id)])[0]

    def read_at(
        self, customer_id: str, merchant_id: str, *, event_ts: datetime, amount: float
    ) -> OnlineFeatures:
        """``read`` for a transaction at ``event_ts`` of ``amount`` (see ``read_many``'s ``at``)."""
        return self.read_many([(customer_id, merchant_id)], at=[(event_ts, amount)])[0]

    def read_many(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        at: Sequence[tuple[datetime, float]] | None = None,
    ) -> list[OnlineFeatures]:
        """Features of many (customer, merchant) pairs, in one round trip. A view whose pointer is gone
        (Redis restarted or flushed, TTL lapsed) reads as an empty namespace in ``versions`` and every
        entity of it as missing: the caller tells that apart from an unknown entity.

        ``at``: each pair's transaction (event time, amount). With the speed layer on, the same round
        trip reads the customers' speed-layer state, and each customer's features are exactly
        ``customer_features``' for that transaction (the windows at its time, the request-time features
        with the z-score in numeric, ``last_txn_ts`` and ``known_merchant_ids`` including the stream's
        earlier events); ``speed_layer`` says ``merged``, or why the batch values stay
        (``beyond_horizon``, ``not_exact``; ``disabled`` without the speed layer or ``at``)."""
        speed = self.speed is not None and at is not None
        reply = self._read_cluster(pairs, speed) if self.cluster else self._read_server(pairs, speed)
        names = (self.customer_view.name, self.merchant_view.name)
        versions = dict(zip(names, reply.namespaces, strict=True))
        results = []
        for index in range(len(pairs)):
            customer = decode_entity(self.customer_view, reply.records[2 * index])
            merchant = decode_entity(self.merchant_view, reply.records[2 * index + 1])
            missing = [
                name for name, found in (("customer", customer), ("merchant", merchant)) if found is None
            ]
            results.append(
                OnlineFeatures(
                    customer=customer if customer is not None else self.customer_view.defaults(),
                    merchant=merchant if merchant is not None else self.merchant_view.defaults(),
                    missing=missing,
                    versions=dict(versions),
                )
            )
        if at is not None and speed:
            for features, (customer_id, merchant_id), (event_ts, amount), fields in zip(
                results, pairs, at, reply.speed_states, strict=True
            ):
                _merge(features, customer_id, merchant_id, event_ts, amount, fields, reply.watermark)
                if fields and features.speed_layer == "merged" and "customer" in features.missing:
                    features.missing.remove("customer")  # a new card: the stream knows it, exactly
        return results

    def _read_server(self, pairs: Sequence[tuple[str, str]], speed: bool) -> _Reply:
        """One server: the read script over both views (and the speed layer), one ``EVALSHA``."""
        ids = [entity_id for pair in pairs for entity_id in pair]
        reply = self._evalsha(self._speed_script if speed else self._script, ids)
        result = _Reply([reply[0].decode(), reply[1].decode()], reply[2].split(RECORD_SEPARATOR))
        if speed:
            meta = reply[3].decode()
            as_of, _, valid_until = meta.partition("|")
            result.watermark = (int(as_of), int(valid_until)) if meta else None
            for state in reply[4].split(RECORD_SEPARATOR):
                values = state.decode().split(VALUE_SEPARATOR.decode()) if state else []
                result.speed_states.append(dict(zip(values[::2], values[1::2], strict=True)))
        return result

    def _read_cluster(self, pairs: Sequence[tuple[str, str]], speed: bool) -> _Reply:
        """A Redis Cluster: the read script of each view (pointer and entities in the view's slot) and,
        with the speed layer, the meta and each customer's hash (a slot per customer), in ONE cluster
        pipeline (redis-py sends to every node concerned, then reads the replies). Each view is read
        atomically; the two views apart (a push switches them one after the other there)."""
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", script.sha, 1, key, *ids)
            for script, key, ids in zip(
                self._view_scripts, self._pointer_keys, zip(*pairs, strict=True), strict=True
            )
        ]
        if speed:
            assert self.speed is not None
            commands.append(("HMGET", self.speed.meta_key, "as_of_us", "valid_until_us"))
            commands += [("HGETALL", self.speed.key(customer_id)) for customer_id, _ in pairs]
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            try:
                replies = pipe.execute()
                break
            except redis.exceptions.NoScriptError:  # a primary restarted or failed over: load again
                if attempt == 2:
                    raise
                self._load_view_scripts()
        (customer_ns, customer_records), (merchant_ns, merchant_records) = replies[0], replies[1]
        records = [
            record
            for pair in zip(
                customer_records.split(RECORD_SEPARATOR),
                merchant_records.split(RECORD_SEPARATOR),
                strict=True,
            )
            for record in pair
        ]
        result = _Reply([customer_ns.decode(), merchant_ns.decode()], records)
        if speed:
            as_of, valid_until = replies[2]
            result.watermark = None if as_of is None else (int(as_of), int(valid_until))
            result.speed_states = [
                {key.decode(): value.decode() for key, value in state.items()} for state in replies[3:]
            ]
        return result

    def _load_view_scripts(self) -> None:
        load_scripts(self.client, *(script.script for script in self._view_scripts))

    def _evalsha(self, script: Any, args: list[str]) -> Any:
        """A read script on a connection of its own: redis-py's command path around it (connection
        pool, retry wrapper, reply callbacks) cost as much as the round trip (hot 70 → 39 us, cold
        480 → 340 us). A dropped connection (server restart, idle timeout) is reconnected and the read
        sent once more; a script the server lost (restart) is loaded again. Other errors propagate as
        from any redis-py command."""
        keys = self._speed_keys if script is self._speed_script else self._pointer_keys
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        with self._read_lock:
            if self._read_connection is None:
                self._read_connection = DirectConnection(self.client)
            connection: DirectConnection = self._read_connection
            try:
                return self._send(connection, script, command)
            except redis.exceptions.TimeoutError:  # a slow server: no second wait
                connection.close()
                raise
            except redis.exceptions.ConnectionError:
                connection.close()  # execute connects again
            try:
                return self._send(connection, script, command)
            except redis.exceptions.RedisError:
                connection.close()
                raise

    def _send(self, connection: DirectConnection, script: Any, command: tuple[Any, ...]) -> Any:
        try:
            return connection.execute(*command)
        except redis.exceptions.NoScriptError:
            self.client.script_load(script.script)  # same script, same sha
            return connection.execute(*command)

    def probe(self) -> dict[str, str | None]:
        """The two scored views' current namespaces (None: the pointer is gone), in one ``MGET`` on a
        connection of its own with no retry: the scoring service's health probe, off the request path.
        Raises redis-py's ``ConnectionError`` / ``TimeoutError`` as a read would."""
        views = (self.customer_view.name, self.merchant_view.name)
        values = _mget(self._probe_client, self._pointer_keys)
        return {
            view: value.decode() if isinstance(value, bytes) else value
            for view, value in zip(views, values, strict=True)
        }

    def current_namespaces(self) -> dict[str, str | None]:
        values = _mget(self.client, [self.keys.pointer(name) for name in self.views])
        return {
            name: value.decode() if isinstance(value, bytes) else value
            for name, value in zip(self.views, values, strict=True)
        }

    def meta(self, view: str) -> dict[str, str]:
        """What the current namespace of ``view`` holds (entities, as_of_us, written_at, ...)."""
        namespace = self.current_namespaces().get(view)
        if not namespace:
            return {}
        raw = self.client.hgetall(Keys.meta(namespace))
        return {key.decode(): value.decode() for key, value in raw.items()}

    # --- writing --------------------------------------------------------------------------------
    def writer(self) -> OnlineWriter:
        return OnlineWriter(
            self._bulk_client,
            self.keys,
            ttl_seconds=self.ttl_seconds,
            batch_entities=self._batch_entities,
            max_removal_share=self.max_removal_share,
        )

    def push_tables(
        self, tables: Mapping[str, pa.Table], *, full: bool = False, allow_mass_removal: bool = False
    ) -> PushResult:
        """Push string tables (columns: the entity key and ``OnlineView.field_names``) by view name.
        Raises ``MassRemovalError`` (nothing written) when a view would lose more than
        ``max_removal_share`` of its entities, unless ``allow_mass_removal``."""
        return self.writer().push(
            {name: (self.views[name], table) for name, table in tables.items()},
            full=full,
            manifest_hash=self.registry.manifest_hash,
            allow_mass_removal=allow_mass_removal,
        )

    def push_from_postgres(
        self, database_url: str, *, full: bool = False, allow_mass_removal: bool = False
    ) -> PushResult:
        """Read every view's ``*_latest`` table and push it (full: a new namespace, switched in)."""
        tables = {name: fetch_latest(database_url, view) for name, view in self.views.items()}
        return self.push_tables(tables, full=full, allow_mass_removal=allow_mass_removal)

    def push_speed_snapshot(self, database_url: str) -> SpeedPush | None:
        """``features.customer_stream_snapshot`` → the speed layer: every customer's snapshot row and
        its watermark, the stream events it now holds dropped (per customer, in one script), then the
        newest watermark recorded (docs/streaming.md, "Moving the watermark"). None with the speed layer
        off. A failure part way leaves every customer exact: a customer's hash holds either its old
        snapshot and events or its new ones, and the recorded watermark stays the old one until the end.
        A table older than the watermark already pushed (a run that did not rebuild it) is not pushed
        (``SpeedPush.skipped``)."""
        if self.speed is None:
            return None
        started = time.perf_counter()
        built = snapshot_watermark(database_url)
        if built is None:
            return SpeedPush(0, None, None, time.perf_counter() - started, "no snapshot built yet")
        as_of, valid_until = built
        speed = SpeedStore(self._bulk_client, self.keys.prefix)
        current = speed.watermark()
        if current is not None and current[0] > to_us(as_of):
            skipped = f"older than the watermark pushed ({from_us(current[0]).isoformat()})"
            return SpeedPush(0, as_of, valid_until, time.perf_counter() - started, skipped)
        written = speed.push_snapshots(fetch_snapshots(database_url), to_us(as_of), to_us(valid_until))
        return SpeedPush(written, as_of, valid_until, time.perf_counter() - started)

    def purge(self) -> int:
        """Delete every key under this store's prefix (tests, benchmarks). Returns keys deleted."""
        deleted = 0
        batch: list[bytes] = []
        for key in self._bulk_client.scan_iter(match=f"{self.keys.prefix}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += int(self._bulk_client.unlink(*batch))
                batch = []
        if batch:
            deleted += int(self._bulk_client.unlink(*batch))
        return deleted

    def close(self) -> None:
        if self._read_connection is not None:
            self._read_connection.close()
        self.client.close()
        self._bulk_client.close()
        self._probe_client.close()


@dataclass
class _Reply:
    """A read's reply, from one server or a cluster."""

    namespaces: list[str]
    """Per view (customer, merchant): the namespace read ('' without a pointer)."""
    records: list[bytes]
    """The entities' records, customer and merchant of each pair in turn (``reader.decode_entity``)."""
    watermark: tuple[int, int] | None = None
    speed_states: list[dict[str, str]] = field(default_factory=list)
    """Per pair: the customer's speed-layer hash (empty: none)."""


def _mget(client: Any, keys: list[str]) -> list[Any]:
    """``MGET`` of keys that may lie in different slots of a cluster (there: one ``GET`` per slot)."""
    if isinstance(client, redis.RedisCluster):
        return list(client.mget_nonatomic(keys))
    return list(client.mget(keys))


def _merge(
    features: OnlineFeatures,
    customer_id: str,
    merchant_id: str,
    event_ts: datetime,
    amount: float,
    fields: dict[str, str],
    watermark: tuple[int, int] | None,
) -> None:
    """The speed layer's exact customer features over the batch values (``read_many``'s ``at``)."""
    t = to_us(event_ts)
    try:
        exact = exact_features(
            customer_id, fields, watermark, event_ts_us=t, merchant_id=merchant_id, amount=amount
        )
    except BeyondHorizon:
        features.speed_layer = "beyond_horizon"
        return
    except NotExact:
        features.speed_layer = "not_exact"
        return
    customer = features.customer
    for name, value in exact.items():
        typed = value if isinstance(value, bool | int) else math.nan if value is None else float(value)
        customer[name] = typed
    # the state the request-time features derive from, consistent with them (the batch values may be of
    # another refresh than the speed layer's snapshot); EXACT_AT: the derived ones are these, as they are
    prev = exact["seconds_since_prev_txn"]
    customer["last_txn_ts"] = None if prev is None else from_us(t - round(prev * 1_000_000))
    known = customer["known_merchant_ids"]
    if exact["is_new_merchant"] == (merchant_id in known):  # rare: the batch values are of another refresh
        known = frozenset(known)  # a busy card knows hundreds: no copy of them on the usual read
        customer["known_merchant_ids"] = (
            known - {merchant_id} if exact["is_new_merchant"] else known | {merchant_id}
        )
    customer[EXACT_AT] = event_ts
    features.speed_layer = "merged"
