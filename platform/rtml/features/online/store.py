"""``OnlineStore``: the online feature store's one entry point (reader and bulk writer).

    store = OnlineStore(redis_url)                    # registry from the dbt manifest
    feats = store.read("c000123", "m00042")           # one round trip
    feats = store.read_at("c000123", "m00042", event_ts=ts, amount=12.5)  # + the speed layer, if on
    store.push_from_postgres(database_url)            # *_latest tables → Redis

Redis connection and timeout errors propagate (``redis.exceptions.ConnectionError`` /
``TimeoutError``): the scoring service decides between failing open and closed.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from rtml.config import get_settings
from rtml.features.online.keys import Keys
from rtml.features.online.reader import RECORD_SEPARATOR, OnlineFeatures, decode_entity, read_script
from rtml.features.online.schema import OnlineView, online_views
from rtml.features.online.source import fetch_latest
from rtml.features.online.writer import OnlineWriter, PushResult
from rtml.features.registry import FeatureRegistry, get_registry
from rtml.streaming.events import from_us, to_us
from rtml.streaming.features import BeyondHorizon, NotExact
from rtml.streaming.redis_state import SpeedStore

CUSTOMER_VIEW = "customer_features"
MERCHANT_VIEW = "merchant_features"
BULK_SOCKET_TIMEOUT_S = 120.0


class OnlineStore:
    def __init__(
        self,
        redis_url: str,
        registry: FeatureRegistry | None = None,
        ttl_seconds: int | None = None,
        *,
        key_prefix: str | None = None,
        socket_timeout_ms: float | None = None,
        batch_entities: int | None = None,
        max_removal_share: float | None = None,
        speed_layer: bool | None = None,
    ) -> None:
        """``ttl_seconds``: how long a push stays readable without the next one (the views' pointers
        expire; unset: ``online_ttl_seconds``; 0: never).
        ``socket_timeout_ms``: per-command socket timeout of the reader (unset:
        ``redis_socket_timeout_ms``).
        ``max_removal_share``: the largest share of a view's entities a push may remove (unset:
        ``online_max_removal_share``; see ``writer``).
        ``speed_layer``: merge the stream's state in ``read_at`` (unset: ``speed_layer_enabled``)."""
        settings = get_settings()
        self.registry = registry or get_registry()
        self.views: dict[str, OnlineView] = online_views(self.registry)
        self.customer_view = self.views[CUSTOMER_VIEW]
        self.merchant_view = self.views[MERCHANT_VIEW]
        self.keys = Keys(key_prefix or settings.online_key_prefix)
        ttl = settings.online_ttl_seconds if ttl_seconds is None else ttl_seconds
        self.ttl_seconds: int | None = ttl or None
        timeout = (
            socket_timeout_ms if socket_timeout_ms is not None else settings.redis_socket_timeout_ms
        ) / 1000
        self.client = redis.Redis.from_url(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        # bulk writes wait long for a busy server, but not forever for a dead one
        self._bulk_client = redis.Redis.from_url(redis_url, socket_timeout=BULK_SOCKET_TIMEOUT_S)
        self._batch_entities = batch_entities or settings.online_push_batch_entities
        self.max_removal_share = (
            settings.online_max_removal_share if max_removal_share is None else max_removal_share
        )
        self._script = self.client.register_script(read_script(self.customer_view, self.merchant_view))
        enabled = settings.speed_layer_enabled if speed_layer is None else speed_layer
        self.speed: SpeedStore | None = SpeedStore(self.client, self.keys.prefix) if enabled else None
        self._read_lock = threading.Lock()
        self._read_connection: Any = None  # a redis-py Connection, made on the first read
        self._pointer_keys = [
            self.keys.pointer(view.name) for view in (self.customer_view, self.merchant_view)
        ]
        # probe(): no retries (redis-py retries 3 times by default), so a probe ends within one timeout
        self._probe_client = redis.Redis.from_url(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )

    # --- reading --------------------------------------------------------------------------------
    def read(self, customer_id: str, merchant_id: str) -> OnlineFeatures:
        """The customer's and the merchant's features, in one round trip."""
        return self.read_many([(customer_id, merchant_id)])[0]

    def read_many(self, pairs: Sequence[tuple[str, str]]) -> list[OnlineFeatures]:
        """Features of many (customer, merchant) pairs, in one round trip. A view whose pointer is gone
        (Redis restarted or flushed, TTL lapsed) reads as an empty namespace in ``versions`` and every
        entity of it as missing: the caller tells that apart from an unknown entity."""
        reply = self._evalsha([entity_id for pair in pairs for entity_id in pair])
        versions = {
            self.customer_view.name: reply[0].decode(),
            self.merchant_view.name: reply[1].decode(),
        }
        records = reply[2].split(RECORD_SEPARATOR)
        results = []
        for index in range(len(pairs)):
            customer = decode_entity(self.customer_view, records[2 * index])
            merchant = decode_entity(self.merchant_view, records[2 * index + 1])
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
        return results

    def read_at(
        self, customer_id: str, merchant_id: str, *, event_ts: datetime, amount: float
    ) -> OnlineFeatures:
        """``read``, and with the speed layer on, the customer's features exactly as
        ``customer_features`` defines them for this transaction (windows at ``event_ts``, the
        request-time features, ``last_txn_ts`` and ``known_merchant_ids`` including the stream's
        earlier events); ``speed_layer`` says which. Where the speed layer cannot answer exactly (past
        its horizon, no snapshot yet) the batch values stay, as without it."""
        features = self.read(customer_id, merchant_id)
        if self.speed is None:
            return features
        t = to_us(event_ts)
        try:
            exact = self.speed.features_at(customer_id, event_ts_us=t, merchant_id=merchant_id, amount=amount)
        except BeyondHorizon:
            features.speed_layer = "beyond_horizon"
            return features
        except NotExact:
            features.speed_layer = "not_exact"
            return features
        customer = features.customer
        for name, value in exact.items():
            customer[name] = (
                value if isinstance(value, bool | int) else math.nan if value is None else float(value)
            )
        # the state the scorer derives the request-time features from, consistent with them (the batch
        # values may be of another refresh than the speed layer's snapshot)
        prev = exact["seconds_since_prev_txn"]
        customer["last_txn_ts"] = None if prev is None else from_us(t - round(prev * 1_000_000))
        known = frozenset(customer["known_merchant_ids"])
        customer["known_merchant_ids"] = (
            known - {merchant_id} if exact["is_new_merchant"] else known | {merchant_id}
        )
        features.speed_layer = "merged"
        return features

    def _evalsha(self, args: list[str]) -> Any:
        """The read script on a connection of its own: redis-py's command path around it (connection
        pool, retry wrapper, reply callbacks) cost as much as the round trip (hot 70 → 39 us, cold
        480 → 340 us). A dropped connection (server restart, idle timeout) is reconnected and the read
        sent once more; a script the server lost (restart) is loaded again. Other errors propagate as
        from any redis-py command."""
        command = ("EVALSHA", self._script.sha, 2, *self._pointer_keys, *args)
        with self._read_lock:
            if self._read_connection is None:
                self._read_connection = self.client.connection_pool.make_connection()
            connection: Any = self._read_connection
            try:
                return self._send(connection, command)
            except redis.exceptions.TimeoutError:  # a slow server: no second wait
                connection.disconnect()
                raise
            except redis.exceptions.ConnectionError:
                connection.disconnect()  # send_command connects again
            try:
                return self._send(connection, command)
            except redis.exceptions.RedisError:
                connection.disconnect()
                raise

    def _send(self, connection: Any, command: tuple[Any, ...]) -> Any:
        try:
            connection.send_command(*command)
            return connection.read_response()
        except redis.exceptions.NoScriptError:
            self.client.script_load(self._script.script)  # same script, same sha
            connection.send_command(*command)
            return connection.read_response()

    def probe(self) -> dict[str, str | None]:
        """The two scored views' current namespaces (None: the pointer is gone), in one ``MGET`` on a
        connection of its own with no retry: the scoring service's health probe, off the request path.
        Raises redis-py's ``ConnectionError`` / ``TimeoutError`` as a read would."""
        views = (self.customer_view.name, self.merchant_view.name)
        values = self._probe_client.mget(self._pointer_keys)
        return {
            view: value.decode() if isinstance(value, bytes) else value
            for view, value in zip(views, values, strict=True)
        }

    def current_namespaces(self) -> dict[str, str | None]:
        values = self.client.mget([self.keys.pointer(name) for name in self.views])
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
        return {key.decode(): value.decode() for key, value in raw.items()}  # type: ignore[union-attr]

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
            self._read_connection.disconnect()
        self.client.close()
        self._bulk_client.close()
        self._probe_client.close()
