"""The bulk writer: ``*_latest`` tables → one Redis hash per entity.

Full push (first push, a new shape, or asked for): every entity is written into a NEW namespace, then
the views' pointers are switched with one ``MSET`` (atomic), then the old namespaces are deleted.
Readers resolve the pointer and read the hashes inside one Lua script (``reader``), so they see the
old complete set or the new complete set, never a mix.

Incremental push (same shape as the current namespace): each entity's digest of its stored values is
compared with the digest kept in ``{ns}:digests``; only changed entities are rewritten (one ``HSET``
of all fields, atomic per entity), vanished ones deleted, and unchanged ones only get their TTL
refreshed (``EXPIRE``), so they do not expire while they are still current.

One writer per key prefix at a time: a lock key guards the push (the Dagster asset is the writer).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import redis

from rtml.features.online import resp
from rtml.features.online.keys import Keys
from rtml.features.online.schema import OnlineView

Mode = Literal["full", "incremental"]
LOCK_SECONDS = 3600


class PushLockedError(RuntimeError):
    """Another push of the same key prefix is running."""


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
    bytes_sent: int = 0
    seconds: float = 0.0
    previous_namespace: str | None = None


@dataclass
class PushResult:
    views: dict[str, ViewPush] = field(default_factory=dict)
    seconds: float = 0.0
    deleted_namespaces: list[str] = field(default_factory=list)

    @property
    def entities_written(self) -> int:
        return sum(push.written for push in self.views.values())

    @property
    def bytes_sent(self) -> int:
        return sum(push.bytes_sent for push in self.views.values())


def digests_of(table: pa.Table, view: OnlineView) -> pa.Array:
    """A 64-bit digest per row of the stored values (as decimal strings)."""
    values = [pc.fill_null(table.column(name).combine_chunks(), "") for name in view.field_names]
    # \x1e (record separator) cannot occur in any rendered value, so the join is unambiguous
    rows = pc.binary_join_element_wise(*values, "\x1e")
    hashed = pd.util.hash_array(np.asarray(rows.to_numpy(zero_copy_only=False), dtype=object))
    return pc.cast(pa.array(hashed, pa.uint64()), pa.string())


class OnlineWriter:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_seconds: int | None,
        batch_entities: int = 10_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.ttl_seconds = ttl_seconds
        self.batch_entities = batch_entities

    # --- the push -------------------------------------------------------------------------------
    def push(
        self, tables: Mapping[str, tuple[OnlineView, pa.Table]], *, full: bool = False, manifest_hash: str = ""
    ) -> PushResult:
        """Write every view's table; full pushes are switched in together (one ``MSET``)."""
        started = time.perf_counter()
        result = PushResult()
        lock = self.client.lock(f"{self.keys.prefix}:push-lock", timeout=LOCK_SECONDS, blocking=False)
        if not lock.acquire():
            raise PushLockedError(f"another push of {self.keys.prefix!r} is running (lock {lock.name})")
        try:
            switches: dict[str, str] = {}
            for name, (view, table) in tables.items():
                current = self._current(name)
                shape = f"v{view.version}:{view.fingerprint}"
                if full or current is None or Keys.shape(current) != shape:
                    namespace = self.keys.namespace(name, view.version, view.fingerprint)
                    self.client.sadd(self.keys.namespaces(name), namespace)
                    push = self._write_full(view, table, namespace)
                    switches[self.keys.pointer(name)] = namespace
                else:
                    push = self._write_incremental(view, table, current)
                push.previous_namespace = current
                self._write_meta(push, table, view, manifest_hash)
                result.views[name] = push
            if switches:
                self.client.mset(switches)  # the switch: atomic for all views at once
            for name in tables:
                result.deleted_namespaces += self.delete_stale_namespaces(name)
        finally:
            lock.release()
        result.seconds = time.perf_counter() - started
        return result

    def _current(self, view: str) -> str | None:
        value = self.client.get(self.keys.pointer(view))
        return value.decode() if isinstance(value, bytes) else value  # type: ignore[return-value]

    def _write_full(self, view: OnlineView, table: pa.Table, namespace: str) -> ViewPush:
        started = time.perf_counter()
        push = ViewPush(view.name, namespace, "full", table.num_rows)
        ids = table.column(view.entity_key).combine_chunks()
        push.bytes_sent = self._send_batches(self._hset_batches(view, table, ids, digests_of(table, view), namespace))
        push.written = table.num_rows
        push.seconds = time.perf_counter() - started
        return push

    def _write_incremental(self, view: OnlineView, table: pa.Table, namespace: str) -> ViewPush:
        started = time.perf_counter()
        push = ViewPush(view.name, namespace, "incremental", table.num_rows)
        ids = table.column(view.entity_key).combine_chunks()
        digests = digests_of(table, view)
        stored = self.client.hgetall(Keys.digests(namespace))
        old = pd.Series({key.decode(): value.decode() for key, value in stored.items()}, dtype=object)
        id_values = pd.Series(ids.to_numpy(zero_copy_only=False), dtype=object)
        changed = (id_values.map(old) != pd.Series(digests.to_numpy(zero_copy_only=False), dtype=object)).to_numpy()
        removed = sorted(set(old.index) - set(id_values))
        mask = pa.array(changed, pa.bool_())
        changed_table = table.filter(mask)
        payloads = list(
            self._hset_batches(
                view, changed_table, ids.filter(mask), digests.filter(mask), namespace
            )
        )
        prefix = Keys.entity_prefix(namespace)
        if self.ttl_seconds is not None:  # keep unchanged entities alive without rewriting them
            unchanged_keys = pc.binary_join_element_wise(prefix, ids.filter(pc.invert(mask)), "")
            payloads += self._batched(unchanged_keys, lambda keys: resp.key_commands("EXPIRE", keys, str(self.ttl_seconds)))
        if removed:
            removed_ids = pa.array(removed, pa.string())
            payloads += self._batched(
                pc.binary_join_element_wise(prefix, removed_ids, ""), lambda keys: resp.key_commands("UNLINK", keys)
            )
            payloads.append((resp.variadic_command("HDEL", [Keys.digests(namespace)], [removed_ids]), 1))
        push.bytes_sent = self._send_batches(iter(payloads))
        push.written = changed_table.num_rows
        push.unchanged = table.num_rows - push.written
        push.removed = len(removed)
        push.seconds = time.perf_counter() - started
        return push

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
        }
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(meta_key, mapping=mapping)  # type: ignore[arg-type]
        if self.ttl_seconds is not None:
            for key in (meta_key, Keys.digests(push.namespace)):
                pipe.expire(key, self.ttl_seconds)
        pipe.execute()

    # --- batches --------------------------------------------------------------------------------
    def _batched(self, keys: pa.Array, encode) -> list[tuple[bytes, int]]:  # type: ignore[no-untyped-def]
        step = self.batch_entities
        return [
            (resp.concatenated(encode(keys.slice(start, step))), len(keys.slice(start, step)))
            for start in range(0, len(keys), step)
        ]

    def _hset_batches(
        self, view: OnlineView, table: pa.Table, ids: pa.Array, digests: pa.Array, namespace: str
    ) -> Iterator[tuple[bytes, int]]:
        """(payload, number of replies) per batch: HSET (+EXPIRE) per entity, one HSET of digests."""
        prefix = Keys.entity_prefix(namespace)
        columns = [table.column(name).combine_chunks() for name in view.field_names]
        per_entity = 1 if self.ttl_seconds is None else 2
        for start in range(0, table.num_rows, self.batch_entities):
            batch_ids = ids.slice(start, self.batch_entities)
            keys = pc.binary_join_element_wise(prefix, batch_ids, "")
            values = [column.slice(start, self.batch_entities) for column in columns]
            payload = resp.concatenated(resp.hset_commands(keys, view.field_names, values, self.ttl_seconds))
            payload += resp.variadic_command(
                "HSET", [Keys.digests(namespace)], [batch_ids, digests.slice(start, self.batch_entities)]
            )
            yield payload, len(batch_ids) * per_entity + 1

    def _send_batches(self, batches: Iterator[tuple[bytes, int]]) -> int:
        """Send each batch, encoding the next one while Redis works on the previous (two cores)."""
        channel = resp.BulkChannel(self.client.connection_pool.make_connection())
        sent = 0
        try:
            for payload, replies in batches:  # the generator encodes the next batch here
                channel.drain()
                channel.send(payload, replies)
                sent += len(payload)
            channel.drain()
        finally:
            channel.close()
        return sent

    # --- clean-up -------------------------------------------------------------------------------
    def delete_stale_namespaces(self, view: str) -> list[str]:
        """Delete every namespace of ``view`` but the current one (old builds, failed builds)."""
        current = self._current(view)
        members = {m.decode() for m in self.client.smembers(self.keys.namespaces(view))}  # type: ignore[union-attr]
        stale = sorted(members - {current} if current else members)
        for namespace in stale:
            self.delete_namespace(view, namespace)
        return stale

    def delete_namespace(self, view: str, namespace: str) -> None:
        ids = [key.decode() for key in self.client.hkeys(Keys.digests(namespace))]
        if ids:
            keys = pc.binary_join_element_wise(Keys.entity_prefix(namespace), pa.array(ids, pa.string()), "")
            self._send_batches(iter(self._batched(keys, lambda batch: resp.key_commands("UNLINK", batch))))
        self.client.unlink(Keys.digests(namespace), Keys.meta(namespace))
        self.client.srem(self.keys.namespaces(view), namespace)
