"""The online reader: a customer's and a merchant's features in ONE round trip.

One Lua script (``EVALSHA``, loaded once) resolves each view's current namespace and ``HMGET``s the
entity hashes. A script runs atomically, so a read never straddles a version switch. The hash keys
are computed inside the script (they depend on the pointer), which is fine on a single Redis server;
on Redis Cluster the views' keys would need one hash tag per view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rtml.features.online.schema import OnlineView

READ_SCRIPT = """
-- KEYS: the views' pointer keys.
-- ARGV: per view: field count, field names...; then (view index, entity id) per entity to read.
-- Returns {namespace per view..., records}: one string for all entities (records separated by \\x1d,
-- '+' and the values joined by \\x1e for a found entity, '-' for an unknown one). One bulk string
-- instead of a nested array: redis-py's pure-Python parser would spend most of a read on the array.
local namespaces, fields, i = {}, {}, 1
for v = 1, #KEYS do
  namespaces[v] = redis.call('GET', KEYS[v])
  local n = tonumber(ARGV[i])
  fields[v] = {unpack(ARGV, i + 1, i + n)}
  i = i + n + 1
end
local out, records = {}, {}
for v = 1, #KEYS do out[v] = namespaces[v] or '' end
while i <= #ARGV do
  local v = tonumber(ARGV[i])
  local ns = namespaces[v]
  local values = ns and redis.call('HMGET', ns .. ':e:' .. ARGV[i + 1], unpack(fields[v]))
  if values and values[1] then
    for k = 1, #values do values[k] = values[k] or '' end
    records[#records + 1] = '+' .. table.concat(values, '\\30')
  else
    records[#records + 1] = '-'
  end
  i = i + 2
end
out[#out + 1] = table.concat(records, '\\29')
return out
"""
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
    return {f.name: f.decode(value) for f, value in zip(view.fields, values, strict=True)}
