"""The bulk writer: ``*_latest`` tables → one Redis hash per entity.

Full push (first push, a new shape, or asked for): every entity is written into a NEW namespace, then
the views' pointers are switched in one ``MULTI``/``EXEC`` (atomic), then the old namespaces are deleted.
Readers resolve the pointer and read the hashes inside one Lua script (``reader``), so they see the
old complete set or the new complete set, never a mix. On a Redis Cluster each view's keys share a slot
(``keys``): a view's bulk writes go to its primary, and the views switch one after the other (a read
between sees each view complete, the customer view of the new push and the merchant view of the old).

Incremental push (same shape as the current namespace): each entity's digest of its stored values is
compared with the digest kept in ``{ns}:digests`` (see ``digests``); only changed entities are
rewritten (one ``HSET`` of all fields, atomic per entity) and vanished ones deleted. Unchanged
entities are not touched.

TTL: it lives on the views' pointers (``SET ... EX``), refreshed by every push, full or incremental.
When no push has refreshed a view for that long, its pointer expires and readers get "unknown" for
every entity of the view; the orphaned namespace is deleted by the next push. Every push covers every
entity of the table, so this equals per-entity expiry refreshed by each push, without the per-key
``EXPIRE`` that costs a third of the bulk write's throughput (measured on Redis 7: 214k → 159k
entities/s) and that would make an incremental push touch every key.

Guard against mass removal: an empty or truncated ``*_latest`` table would make a push drop almost every
entity (an incremental push deletes the vanished ones; a full push switches to a namespace without
them). Before anything is written, each view's table is compared with the entities of its current
namespace; when more than ``max_removal_share`` of them would go, the push is refused
(``MassRemovalError``) unless the caller allows it explicitly.

One writer per key prefix at a time: a lock key serializes pushes (the scheduled refresh and a self-heal
rebuild may overlap: the second waits for the first, then finds its work mostly done).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from rtml.features.online import resp
from rtml.features.online.digests import Digests, digests_of, load_digests, store_digests
from rtml.features.online.keys import Keys
from rtml.features.online.redis_wire import DirectConnection
from rtml.features.online.schema import OnlineView
from rtml.redis_client import is_cluster

Mode = Literal["full", "incremental"]
LOCK_SECONDS = 3600
"""A push holding the lock longer than this is presumed dead (the lock expires)."""
LOCK_WAIT_SECONDS = 600
"""How long a push waits for another push of the same prefix to finish."""


class PushLockedError(RuntimeError):
    """Another push of the same key prefix is still running after ``LOCK_WAIT_SECONDS``."""


@dataclass(frozen=True)
class Removal:
    """Entities of a view's current namespace that a push would remove."""

    view: str
    removed: int
    current: int
    """Entities in the current namespace."""
    rows: int
    """Rows of the table being pushed."""

    @property
    def share(self) -> float:
        return self.removed / self.current if self.current else 0.0

    def __str__(self) -> str:
        return (
            f"{self.view}: {self.removed:,} of the {self.current:,} entities in Redis ({self.share:.1%}) are "
            f"not among the {self.rows:,} rows of its table and would be removed"
        )


class MassRemovalError(RuntimeError):
    """A push would remove more than the allowed share of a view's entities; nothing was written."""

    def __init__(self, refused: list[Removal], max_share: float) -> None:
        self.refused = refused
        self.max_share = max_share
        super().__init__(
            "refused to push the online store (nothing was written): "
            + "; ".join(map(str, refused))
            + f". The limit is {max_share:.0%} of a view's entities (RTML_ONLINE_MAX_REMOVAL_SHARE): an "
            "empty or truncated *_latest table is more likely than that many entities vanishing. If the "
            "tables are right, push again allowing the mass removal."
        )


@dataclass
class ViewPush:
    """What a push did to one view."""

    view: str
    namespace: str
    mode: Mode
    entities: int
    """Rows in the online table."""
    written: int = 0
    """Hashes (re)written."""
    unchanged: int = 0
    removed: int = 0
    """Entities of the previous namespace not in the table (deleted by an incremental push; left
    behind with the old namespace by a full one)."""
    bytes_sent: int = 0
    seconds: float = 0.0
    previous_namespace: str | None = None


@dataclass
class PushResult:
    views: dict[str, ViewPush] = field(default_factory=dict)
    seconds: float = 0.0
    """Whole push: writes, switch and deletion of the old namespaces."""
    cleanup_seconds: float = 0.0
    """Of which deleting the old namespaces (after the switch: readers no longer wait for it)."""
    deleted_namespaces: list[str] = field(default_factory=list)

    @property
    def entities_written(self) -> int:
        return sum(push.written for push in self.views.values())

    @property
    def bytes_sent(self) -> int:
        return sum(push.bytes_sent for push in self.views.values())


@dataclass(frozen=True)
class _Plan:
    full: bool
    current: str | None
    previous: Digests
    """Digests of the current namespace (empty without one)."""
    vanished: pa.Array
    """Ids of the current namespace that the table no longer has."""
    removal: Removal


class OnlineWriter:
    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        keys: Keys,
        *,
        ttl_seconds: int | None,
        batch_entities: int = 10_000,
        max_removal_share: float = 1.0,
    ) -> None:
        self.client = client
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self.batch_entities = batch_entities
        self.max_removal_share = max_removal_share

    # --- the push -------------------------------------------------------------------------------
    def push(
        self,
        tables: Mapping[str, tuple[OnlineView, pa.Table]],
        *,
        full: bool = False,
        manifest_hash: str = "",
        allow_mass_removal: bool = False,
    ) -> PushResult:
        """Write every view's table; full pushes are switched in together (one transaction). Raises
        ``MassRemovalError`` before writing anything when a view would lose more than
        ``max_removal_share`` of its entities, unless ``allow_mass_removal``."""
        started = time.perf_counter()
        result = PushResult()
        lock = self.client.lock(
            f"{self.keys.prefix}:push-lock",
            timeout=LOCK_SECONDS,
            blocking=True,
            blocking_timeout=LOCK_WAIT_SECONDS,
        )
        if not lock.acquire():
            raise PushLockedError(
                f"another push of {self.keys.prefix!r} is still running after {LOCK_WAIT_SECONDS} s "
                f"(lock {lock.name})"
            )
        try:
            plans = {name: self._plan(name, view, table, full) for name, (view, table) in tables.items()}
            refused = [plan.removal for plan in plans.values() if plan.removal.share > self.max_removal_share]
            if refused and not allow_mass_removal:
                raise MassRemovalError(refused, self.max_removal_share)
            pointers: dict[str, str] = {}
            for name, (view, table) in tables.items():
                plan = plans[name]
                if plan.full:
                    namespace = self.keys.namespace(name, view.version, view.fingerprint)
                    self.client.sadd(self.keys.namespaces(name), namespace)
                    push = self._write_full(view, table, namespace)
                else:
                    push = self._write_incremental(view, table, plan)
                push.removed = plan.removal.removed
                pointers[self.keys.pointer(name)] = push.namespace
                push.previous_namespace = plan.current
                self._write_meta(push, table, view, manifest_hash)
                result.views[name] = push
            # the switch (and TTL refresh): one MULTI/EXEC, atomic for all views at once; on a cluster
            # the views' pointers lie in different slots: one after the other (each view is complete)
            switch = self.client.pipeline(transaction=not is_cluster(self.client))
            for pointer, namespace in pointers.items():
                switch.set(pointer, namespace, ex=self.ttl_seconds)
            switch.execute()
            cleanup_started = time.perf_counter()
            for name in tables:
                result.deleted_namespaces += self.delete_stale_namespaces(name)
            result.cleanup_seconds = time.perf_counter() - cleanup_started
        finally:
            lock.release()
        result.seconds = time.perf_counter() - started
        return result

    def _plan(self, name: str, view: OnlineView, table: pa.Table, full: bool) -> _Plan:
        """Full or incremental, and which entities of the current namespace the table no longer has."""
        current = self._current(name)
        previous = load_digests(self.client, current) if current else Digests.empty()
        shape = f"v{view.version}:{view.fingerprint}"
        vanished = previous.missing_from(table.column(view.entity_key).combine_chunks())
        return _Plan(
            full=full or current is None or Keys.shape(current) != shape,
            current=current,
            previous=previous,
            vanished=vanished,
            removal=Removal(name, len(vanished), len(previous.ids), table.num_rows),
        )

    def _current(self, view: str) -> str | None:
        value = self.client.get(self.keys.pointer(view))
        return value.decode() if isinstance(value, bytes) else value

    def _write_full(self, view: OnlineView, table: pa.Table, namespace: str) -> ViewPush:
        started = time.perf_counter()
        push = ViewPush(view.name, namespace, "full", table.num_rows)
        digests: list[np.ndarray] = []
        push.bytes_sent = self._send_batches(
            namespace, self._entity_batches(view, table, namespace, None, push, digests)
        )
        self._store_digests(view, table, namespace, digests)
        push.seconds = time.perf_counter() - started
        return push

    def _write_incremental(self, view: OnlineView, table: pa.Table, plan: _Plan) -> ViewPush:
        started = time.perf_counter()
        namespace, previous = str(plan.current), plan.previous
        push = ViewPush(view.name, namespace, "incremental", table.num_rows)
        digests: list[np.ndarray] = []
        push.bytes_sent = self._send_batches(
            namespace, self._entity_batches(view, table, namespace, previous, push, digests)
        )
        if len(plan.vanished):
            keys = pc.binary_join_element_wise(Keys.entity_prefix(namespace), plan.vanished, "")
            push.bytes_sent += self._send_batches(
                namespace, iter([(resp.variadic_command("UNLINK", [], [keys]), 1)])
            )
        self._store_digests(view, table, namespace, digests)
        push.seconds = time.perf_counter() - started
        return push

    def _store_digests(
        self, view: OnlineView, table: pa.Table, namespace: str, digests: list[np.ndarray]
    ) -> None:
        ids = table.column(view.entity_key).combine_chunks()
        values = np.concatenate(digests) if digests else np.empty(0, dtype=np.uint64)
        store_digests(self.client, namespace, ids, values)

    def _write_meta(self, push: ViewPush, table: pa.Table, view: OnlineView, manifest_hash: str) -> None:
        meta_key = Keys.meta(push.namespace)
        as_of = None
        for column in ("as_of_ts", "feature_ts"):
            if column in view.field_names and table.num_rows:
                as_of = pc.max(pc.cast(table.column(column), pa.int64())).as_py()
        mapping = {
            "entities": table.num_rows,
            "view_version": view.version,
            "fingerprint": view.fingerprint,
            "manifest_hash": manifest_hash,
            "as_of_us": "" if as_of is None else as_of,
            "written_at": datetime.now(UTC).isoformat(),
            "mode": push.mode,
            "fields": ",".join(view.field_names),  # hash field i holds fields[i]
        }
        self.client.hset(meta_key, mapping=mapping)  # type: ignore[arg-type]

    # --- batches --------------------------------------------------------------------------------
    def _entity_batches(
        self,
        view: OnlineView,
        table: pa.Table,
        namespace: str,
        previous: Digests | None,
        push: ViewPush,
        digests_out: list[np.ndarray],
    ) -> Iterator[tuple[bytes, int]]:
        """(payload, number of replies) per batch of entities: ``HSET`` of every new or changed entity
        (all of them without ``previous`` digests). Every row's digest is appended to ``digests_out``."""
        prefix = Keys.entity_prefix(namespace)
        ids = table.column(view.entity_key).combine_chunks()
        columns = [table.column(name).combine_chunks() for name in view.field_names]
        step = self.batch_entities
        for start in range(0, table.num_rows, step):
            batch_ids = ids.slice(start, step)
            bodies = resp.hset_bodies(view.field_ids, [column.slice(start, step) for column in columns])
            digests = digests_of(bodies)
            digests_out.append(digests)
            if previous is not None:
                changed = previous.changed(batch_ids, digests)
                push.unchanged += int((~changed).sum())
                mask = pa.array(changed)
                batch_ids, bodies = batch_ids.filter(mask), bodies.filter(mask)
            if len(batch_ids):
                keys = pc.binary_join_element_wise(prefix, batch_ids, "")
                push.written += len(batch_ids)
                yield resp.concatenated(resp.hset_commands(keys, len(view.fields), bodies)), len(batch_ids)

    def _send_batches(self, namespace: str, batches: Iterator[tuple[bytes, int]]) -> int:
        """Send each batch (commands on keys of ``namespace``) and wait for its replies in a background
        thread while the caller's thread encodes the next batch: Redis's work on batch k overlaps the
        encoding of batch k + 1 (socket I/O and the pyarrow kernels release the GIL). On a cluster, to
        the primary of the namespace's slot (every key of a view shares it)."""
        channel = resp.BulkChannel(DirectConnection(self.client, namespace))
        sent = 0
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-push") as sender:
                in_flight: Future[None] | None = None
                for payload, replies in batches:  # the generator encodes this batch now
                    if in_flight is not None:
                        in_flight.result()
                    in_flight = sender.submit(channel.send_and_drain, payload, replies)
                    sent += len(payload)
                if in_flight is not None:
                    in_flight.result()
        finally:
            channel.close()
        return sent

    # --- clean-up -------------------------------------------------------------------------------
    def delete_stale_namespaces(self, view: str) -> list[str]:
        """Delete every namespace of ``view`` but the current one (old builds, failed builds), and those of
        the layout before the views' hash tags (``Keys.legacy``)."""
        current = self._current(view)
        members = {m.decode() for m in self.client.smembers(self.keys.namespaces(view))}  # type: ignore[union-attr]
        stale = sorted(members - {current} if current else members)
        for namespace in stale:
            self.delete_namespace(view, namespace)
        legacy_pointer, legacy_set = self.keys.legacy(view)
        legacy = sorted(m.decode() for m in self.client.smembers(legacy_set))  # type: ignore[union-attr]
        for namespace in legacy:
            self.delete_namespace(view, namespace)
        if legacy:
            self.client.unlink(legacy_pointer, legacy_set)
        return stale + legacy

    def delete_namespace(self, view: str, namespace: str) -> None:
        ids = load_digests(self.client, namespace).ids
        keys = pc.binary_join_element_wise(Keys.entity_prefix(namespace), ids, "")
        step = self.batch_entities
        batches = (
            (resp.variadic_command("UNLINK", [], [keys.slice(start, step)]), 1)
            for start in range(0, len(keys), step)
        )
        self._send_batches(namespace, batches)
        self.client.unlink(Keys.digests(namespace), Keys.meta(namespace))
        self.client.srem(self.keys.namespaces(view), namespace)
