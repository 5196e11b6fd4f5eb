"""A real Redis Cluster for tests: three masters on loopback, Debian's ``redis-server`` in cluster mode,
joined by ``redis-cli --cluster create`` (the ``redis_cluster`` fixture in ``conftest``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from rtml.services.processes import free_port


@contextmanager
def running_cluster(home: Path, masters: int = 3) -> Iterator[str]:
    """Start the cluster; yields the URL of its first node (a cluster client finds the others)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server / redis-cli not found: apt-get install redis-server")
    ports = [free_port() for _ in range(masters)]
    # the bus port too (default: port + 10000, which may lie in the kernel's ephemeral range)
    nodes = [
        subprocess.Popen(
            [server, "--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--dir", str(home), "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        for port in ports
    ]  # fmt: skip
    try:
        for port in ports:
            wait_until(lambda p=port: redis.Redis(port=p).ping(), f"node {port} answers")  # type: ignore[misc]
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        for port in ports:
            wait_until(
                lambda p=port: redis.Redis(port=p).cluster("info")["cluster_state"] == "ok",  # type: ignore[misc]
                f"node {port} sees the cluster ok",
            )
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait(10)


def wait_until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except redis.exceptions.RedisError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
