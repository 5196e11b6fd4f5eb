"""Key layout of the online store.

``{prefix}:{<view>}:current``                      string: the namespace readers use (the switch);
                                                   expires after the TTL unless a push refreshes it
``{prefix}:{<view>}:namespaces``                   set: every namespace written (for clean-up)
``{ns}`` = ``{prefix}:{<view>}:v{version}:{fingerprint}:{build}``
``{ns}:e:{entity_id}``                             hash: one entity's values (field i: the i-th field)
``{ns}:digests``                                   list: Arrow IPC chunks of (entity id, digest)
``{ns}:meta``                                      hash: field names, rows, as_of, written_at, manifest hash

A namespace is immutable in shape: its fields are fixed by the fingerprint (see ``schema``), so an
incremental push rewrites whole hashes in place, and a new shape always gets a new namespace.

The braces around the view's name are literal: its hash tag. On a Redis Cluster every key of a view
(pointer, namespaces, entity hashes, digests, meta) lies in one slot, so the read script can resolve the
pointer and read the entities it names atomically, and a push's transactions stay in one slot. The
price: a view lives on one primary (the speed layer's per-customer hashes are what spreads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def view(self, view: str) -> str:
        """The common start of every key of ``view``: ``{prefix}:{<view>}``."""
        return f"{self.prefix}:{{{view}}}"

    def pointer(self, view: str) -> str:
        return f"{self.view(view)}:current"

    def namespaces(self, view: str) -> str:
        return f"{self.view(view)}:namespaces"

    def legacy(self, view: str) -> tuple[str, str]:
        """(pointer, namespaces set) of the layout before the views' hash tags (``{prefix}:{view}:...``
        without braces): the next push deletes what a store of that layout left behind."""
        return f"{self.prefix}:{view}:current", f"{self.prefix}:{view}:namespaces"

    def namespace(self, view: str, version: int, fingerprint: str, build: str | None = None) -> str:
        # the build id keeps two rebuilds of the same shape apart (time-ordered, so they sort by age)
        build = build or _base36(time.time_ns() // 1000)
        return f"{self.view(view)}:v{version}:{fingerprint}:{build}"

    @staticmethod
    def entity_prefix(namespace: str) -> str:
        return f"{namespace}:e:"

    @staticmethod
    def digests(namespace: str) -> str:
        return f"{namespace}:digests"

    @staticmethod
    def meta(namespace: str) -> str:
        return f"{namespace}:meta"

    @staticmethod
    def shape(namespace: str) -> str:
        """``v{version}:{fingerprint}`` of a namespace: an incremental push needs the same shape."""
        return ":".join(namespace.rsplit(":", 3)[1:3])


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while number:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
    return text or "0"
