"""The online feature store (Redis): bulk writer of the ``*_latest`` tables and a one-round-trip reader.

See ``store`` for the entry point, ``keys`` for the key layout and switch protocol, ``schema`` for how
values are encoded and what the defaults of unknown entities are.
"""

from rtml.features.online.reader import OnlineFeatures
from rtml.features.online.store import OnlineStore
from rtml.features.online.writer import PushResult, ViewPush

__all__ = ["OnlineFeatures", "OnlineStore", "PushResult", "ViewPush"]
