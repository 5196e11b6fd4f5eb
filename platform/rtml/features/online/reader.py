"""The online reader: a customer's and a merchant's features in ONE round trip.

One Lua script (``EVALSHA``, loaded once) resolves each view's current namespace and ``HMGET``s the
entity hashes. A script runs atomically, so a read never straddles a version switch. The hash keys
are computed inside the script (they depend on the pointer), which is fine on a single Redis server;
on Redis Cluster the views' keys would need one hash tag per view.

With the speed layer (``read_script(..., speed=True)``) the same call also returns each customer's
speed-layer hash (``rtml.streaming.redis_state``: batch snapshot, watermark, stream events) and the
newest snapshot's watermark, so the scorer's exact read stays one round trip (docs/streaming.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rtml.features.online.schema import OnlineView

READ_SCRIPT_TEMPLATE = """
-- KEYS: the customer view's and the merchant view's pointer keys; with the speed layer, third, its
-- meta key ``{prefix}:speed:meta`` (a customer's speed hash is ``{prefix}:speed:{<customer id>}``).
-- ARGV: customer id, merchant id, customer id, merchant id, ... (one pair per scored transaction).
-- The hash fields to read are part of the script (read_script()), so a call sends only the ids.
-- Returns {customer namespace, merchant namespace, records}: one string for all entities (records
-- separated by \\x1d, '+' and the values joined by \\x1e for a found entity, '-' for an unknown
-- one). One bulk string instead of a nested array: redis-py's pure-Python parser would spend most
-- of a read on the array. With the speed layer, two more: the meta's 'as_of_us|valid_until_us' (''
-- before the first snapshot push) and, per customer, its speed hash's HGETALL joined by \\x1e
-- (fields and values alternating; '' for none), customers separated by \\x1d.
local fields = {FIELDS}
local speed = {SPEED}
local namespaces, out, records = {}, {}, {}
for v = 1, 2 do
  namespaces[v] = redis.call('GET', KEYS[v])
  out[v] = namespaces[v] or ''
end
for i = 1, #ARGV do
  local v = 2 - (i % 2)
  local ns = namespaces[v]
  local values = ns and redis.call('HMGET', ns .. ':e:' .. ARGV[i], unpack(fields[v]))
  if values and values[1] then
    for k = 1, #values do values[k] = values[k] or '' end
    records[#records + 1] = '+' .. table.concat(values, '\\30')
  else
    records[#records + 1] = '-'
  end
end
out[3] = table.concat(records, '\\29')
if speed then
  local meta = redis.call('HMGET', KEYS[3], 'as_of_us', 'valid_until_us')
  out[4] = meta[1] and (meta[1] .. '|' .. meta[2]) or ''
  local base = string.sub(KEYS[3], 1, -5)  -- '{prefix}:speed:' (the meta key without 'meta')
  local states = {}
  for i = 1, #ARGV, 2 do
    states[#states + 1] = table.concat(redis.call('HGETALL', base .. '{' .. ARGV[i] .. '}'), '\\30')
  end
  out[5] = table.concat(states, '\\29')
end
return out
"""


def read_script(customer: OnlineView, merchant: OnlineView, *, speed: bool = False) -> str:
    """The read script for these two views (their positional field ids written into it); ``speed``:
    the speed layer's state too (a third key: its meta key)."""

    def lua_list(ids: list[str]) -> str:
        return "{" + ", ".join(f"'{field_id}'" for field_id in ids) + "}"

    return READ_SCRIPT_TEMPLATE.replace(
        "{FIELDS}", "{" + lua_list(customer.field_ids) + ", " + lua_list(merchant.field_ids) + "}"
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
