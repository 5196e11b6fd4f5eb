"""redis-py's connection internals, in one place: the online store's two fast paths need a connection
of their own, past redis-py's command path, and redis-py offers no public API for either.

* The bulk writer (``resp.BulkChannel``) sends whole batches of pre-encoded protocol bytes and counts
  their one-line replies straight off the socket: a redis-py pipeline of ``HSET`` manages about 33k
  entities/s here, the writer 153k-231k (docs/benchmarks.md, "Online store": Python per command).
* The reader (``OnlineStore._evalsha``) sends its ``EVALSHA`` and reads the reply without the pool,
  retry wrapper and reply callbacks: 70 -> 39 us hot, 480 -> 340 us after a 10 ms pause
  (docs/benchmarks.md, "Session 4").

Used here and nowhere else: ``ConnectionPool.connection_class`` / ``connection_kwargs`` (a connection
outside the pool), ``Connection.connect`` / ``disconnect`` / ``send_command`` / ``read_response`` /
``send_packed_command`` and ``Connection._sock``. redis is pinned (pyproject.toml);
tests/test_private_apis.py fails by name when a new version changes any of them.
"""

from __future__ import annotations

import socket
from typing import Any

from rtml.redis_client import is_cluster


class DirectConnection:
    """One connection to the client's server (on a cluster: the primary of ``key``'s slot), made with
    the client's options (URL, timeouts, TLS, credentials) but outside its pool: nothing else uses it,
    and ``close`` is the owner's."""

    def __init__(self, client: Any, key: str | None = None) -> None:
        if is_cluster(client):
            pool = client.get_node_from_key(key).redis_connection.connection_pool
        else:
            pool = client.connection_pool
        self._connection = pool.connection_class(**pool.connection_kwargs)

    def connect(self) -> None:
        self._connection.connect()

    def execute(self, *args: Any) -> Any:
        """One command and its reply, parsed as redis-py parses replies (no response callbacks); connects
        first when needed. Raises redis-py's errors (``NoScriptError``, ``ConnectionError``, ...)."""
        self._connection.send_command(*args)
        return self._connection.read_response()

    def send_packed(self, payload: bytes) -> None:
        """Protocol bytes as they are (several commands at once); the replies are left unread."""
        self._connection.send_packed_command([payload], check_health=False)

    def recv(self, size: int) -> bytes:
        """Raw reply bytes from the socket (b"": the server closed it)."""
        sock = self._connection._sock
        assert isinstance(sock, socket.socket), "not connected"
        return sock.recv(size)

    def close(self) -> None:
        """Close the socket; the next ``execute`` connects again."""
        self._connection.disconnect()
