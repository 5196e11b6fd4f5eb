"""The online reader: a customer's and a merchant's features in ONE round trip.

One Lua script (``EVALSHA``, loaded once) resolves each view's current namespace and ``HMGET``s the
entity hashes. A script runs atomically, so a read never straddles a version switch. The hash keys
are computed inside the script (they depend on the pointer): each lies in its view's hash slot
(``keys``), so on a Redis Cluster a script per view does the same (``OnlineStore`` pipelines them).

With the speed layer (``read_script(..., speed=True)``) the same call also returns each customer's
speed-layer hash (``rtml.streaming.redis_state``: batch snapshot, watermark, stream events) and the
newest snapshot's watermark, so the scorer's exact read stays one round trip (docs/streaming.md). On a
cluster those hashes (a slot per customer) are read by ``HGETALL``s in the same pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rtml.features.online.schema import OnlineView

READ_SCRIPT_TEMPLATE = """
-- KEYS: each view's pointer key (customer, merchant; on a Redis Cluster one view per script); with the
-- speed layer, next, its meta key ``{prefix}:speed:meta`` (a customer's speed hash is
-- ``{prefix}:speed:{<customer id>}``).
-- ARGV: one id per view in turn (customer id, merchant id, customer id, ...: one pair per transaction).
-- The hash fields to read are part of the script (read_script()), so a call sends only the ids.
-- Returns {one namespace per view, records}: one string for all entities (records separated by
-- \\x1d, '+' and the values joined by \\x1e for a found entity, '-' for an unknown one). One bulk
-- string instead of a nested array: redis-py's pure-Python parser would spend most of a read on the
-- array. With the speed layer, two more: the meta's 'as_of_us|valid_until_us' (''
-- before the first snapshot push) and, per customer, its speed hash's HGETALL joined by \\x1e
-- (fields and values alternating; '' for none), customers separated by \\x1d.
local fields = {FIELDS}
local speed = {SPEED}
local views = #fields
local namespaces, out, records = {}, {}, {}
for v = 1, views do
  namespaces[v] = redis.call('GET', KEYS[v])
  out[v] = namespaces[v] or ''
end
for i = 1, #ARGV do
  local v = (i - 1) % views + 1
  local ns = namespaces[v]
  local values = ns and redis.call('HMGET', ns .. ':e:' .. ARGV[i], unpack(fields[v]))
  if values and values[1] then
    for k = 1, #values do values[k] = values[k] or '' end
    records[#records + 1] = '+' .. table.concat(values, '\\30')
  else
    records[#records + 1] = '-'
  end
end
out[views + 1] = table.concat(records, '\\29')
if speed then
  local meta = redis.call('HMGET', KEYS[views + 1], 'as_of_us', 'valid_until_us')
  out[views + 2] = meta[1] and (meta[1] .. '|' .. meta[2]) or ''
  local base = string.sub(KEYS[views + 1], 1, -5)  -- '{prefix}:speed:' (the meta key without 'meta')
  local states = {}
  for i = 1, #ARGV, views do
    states[#states + 1] = table.concat(redis.call('HGETALL', base .. '{' .. ARGV[i] .. '}'), '\\30')
  end
  out[views + 3] = table.concat(states, '\\29')
end
return out
"""


def read_script(*views: OnlineView, speed: bool = False) -> str:
    """The read script for these views (their positional field ids written into it), read in this
    order; ``speed``: the speed layer's state too (its meta key after the pointers; the first view's
    ids are the customers)."""

    def lua_list(ids: list[str]) -> str:
        return "{" + ", ".join(f"'{field_id}'" for field_id in ids) + "}"

    return READ_SCRIPT_TEMPLATE.replace(
        "{FIELDS}", "{" + ", ".join(lua_list(view.field_ids) for view in views) + "}"
    ).replace("{SPEED}", "true" if speed else "false")


RECORD_SEPARATOR = b"\x1d"
VALUE_SEPARATOR = b"\x1e"


@dataclass
class OnlineFeatures:
    """The online features of one (customer, merchant) pair."""

    customer: dict[str, Any]
    """Every stored feature of ``customer_features`` and its state columns (``as_of_ts``,
    ``last_txn_ts``: aware datetimes or None; ``known_merchant_ids``: frozenset), typed; defaults
    when the customer is unknown."""
    merchant: dict[str, Any]
    """Every stored feature of ``merchant_features`` (and ``feature_ts``), typed; defaults when unknown."""
    missing: list[str] = field(default_factory=list)
    """Entities not found: ``"customer"`` and/or ``"merchant"``."""
    versions: dict[str, str] = field(default_factory=dict)
    """View name → namespace read (``rtml:customer_features:v1:<fingerprint>:<build>``; empty when
    the view was never pushed)."""
    speed_layer: str = "disabled"
    """A read at the request's time (``OnlineStore.read_many(at=...)``, ``read_at``): ``merged`` (the
    customer's features are exact at that time), ``not_exact`` or ``beyond_horizon`` (the batch values:
    the speed layer could not answer exactly); ``disabled``: the speed layer is off, or no time was
    given (the batch values). The label values of ``rtml_speed_layer_reads_total``."""


def same_value(left: Any, right: Any) -> bool:
    """Equality where NaN equals NaN (parity checks)."""
    if isinstance(left, float) and isinstance(right, float) and math.isnan(left) and math.isnan(right):
        return True
    return bool(left == right)


def decode_entity(view: OnlineView, record: bytes) -> dict[str, Any] | None:
    """Typed values of one record of the read script; ``None`` for an unknown entity."""
    if not record.startswith(b"+"):
        return None
    values = record[1:].split(VALUE_SEPARATOR)
    return {name: decode(value) for (name, decode), value in zip(view.decoders, values, strict=True)}
