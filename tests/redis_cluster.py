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

from rtml.stack.processes import free_port


@contextmanager
def running_cluster(home: Path, masters: int = 3) -> Iterator[str]:
    """Start the cluster; yields the URL of its first node (a cluster client finds the others).

    A node that cannot listen (a port taken between choosing and binding it, by a parallel test worker)
    exits: the cluster is started again on other ports, up to three times."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server / redis-cli not found: apt-get install redis-server")
    for attempt in range(3):
        nodes, ports = _start_nodes(server, home / f"try-{attempt}", masters)
        try:
            if _all_answer(nodes, ports):
                created = subprocess.run(
                    [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                     "--cluster-replicas", "0", "--cluster-yes"],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                assert created.returncode == 0, created.stdout + created.stderr
                for port in ports:
                    wait_until(
                        lambda p=port: redis.Redis(port=p).cluster("info")["cluster_state"] == "ok",  # type: ignore[misc]
                        f"node {port} sees the cluster ok",
                    )
                yield f"redis://127.0.0.1:{ports[0]}/0"
                return
        finally:
            for node in nodes:
                node.terminate()
            for node in nodes:
                node.wait(10)
    logs = "\n".join(f"{log}:\n{log.read_text()[-2000:]}" for log in sorted(home.glob("try-*/*.log")))
    raise AssertionError(f"a Redis Cluster node did not start in three tries:\n{logs}")


def _start_nodes(server: str, home: Path, masters: int) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    home.mkdir(parents=True)
    # client and bus ports chosen together and distinct (the bus default, port + 10000, may lie in the
    # kernel's ephemeral range); a node only binds them once started, so free_port alone could repeat one
    ports: list[int] = []
    while len(ports) < 2 * masters:
        port = free_port()
        if port not in ports:
            ports.append(port)
    nodes = []
    for port, bus in zip(ports[:masters], ports[masters:], strict=True):
        log = home / f"node-{port}.log"
        nodes.append(subprocess.Popen(
            [server, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf", "--dir", str(home),
             "--save", "", "--appendonly", "no", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    return nodes, ports[:masters]


def _all_answer(nodes: list[subprocess.Popen[bytes]], ports: list[int], timeout: float = 30) -> bool:
    """True when every node answers PING; False as soon as one has exited (try other ports)."""
    deadline = time.monotonic() + timeout
    waiting = list(zip(nodes, ports, strict=True))
    while waiting:
        node, port = waiting[0]
        if node.poll() is not None:
            return False
        try:
            if redis.Redis(port=port, socket_timeout=2).ping():
                waiting.pop(0)
                continue
        except redis.exceptions.RedisError:
            pass
        assert time.monotonic() < deadline, f"node {port} answers"
        time.sleep(0.1)
    return True


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
