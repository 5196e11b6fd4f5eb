"""Key layout of the online store.

``{prefix}:{view}:current``                        string: the namespace readers use (the switch);
                                                   expires after the TTL unless a push refreshes it
``{prefix}:{view}:namespaces``                     set: every namespace written (for clean-up)
``{ns}`` = ``{prefix}:{view}:v{version}:{fingerprint}:{build}``
``{ns}:e:{entity_id}``                             hash: one entity's values (field i: the i-th field)
``{ns}:digests``                                   list: Arrow IPC chunks of (entity id, digest)
``{ns}:meta``                                      hash: field names, rows, as_of, written_at, manifest hash

A namespace is immutable in shape: its fields are fixed by the fingerprint (see ``schema``), so an
incremental push rewrites whole hashes in place, and a new shape always gets a new namespace.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def pointer(self, view: str) -> str:
        return f"{self.prefix}:{view}:current"

    def namespaces(self, view: str) -> str:
        return f"{self.prefix}:{view}:namespaces"

    def namespace(self, view: str, version: int, fingerprint: str, build: str | None = None) -> str:
        # the build id keeps two rebuilds of the same shape apart (time-ordered, so they sort by age)
        build = build or _base36(time.time_ns() // 1000)
        return f"{self.prefix}:{view}:v{version}:{fingerprint}:{build}"

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
