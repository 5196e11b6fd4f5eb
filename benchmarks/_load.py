"""Shared harness of the serving benchmarks: start a BentoML service, drive it at a constant rate,
measure the worker processes' memory.

Load generator: a hand-written open-loop scheduler (asyncio + uvloop, raw HTTP/1.1 keep-alive
connections, one pre-encoded request), because no installable tool does constant-rate load correctly
here: ``wrk`` (Debian 4.1.0) is closed loop — each connection waits for its answer, so a slow answer
delays the following requests and is counted once (coordinated omission); ``wrk2`` (its constant-rate
fork), ``vegeta`` and ``k6`` are on no reachable registry; locust's ``constant_throughput`` paces each
simulated user, which is again closed loop per user (a user blocked on a slow answer sends nothing),
measures from the actual send rather than the scheduled one, and its gevent runtime would take a
good part of one of the machine's two cores at 300 requests/s. Here request *i* is due at
``start + i / rate`` whatever happened before; it goes out on an idle connection (a new one is opened
when all are busy, up to ``max_connections``), and its latency is measured from the time it was due
(as wrk2 does), so a stall of the service shows in the latency of every request it delayed. The
generator reports ``lag_ms`` (how late it sent, p99): if that is not small, the figures measure the
generator, not the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "platform"))
from rtml.stack.processes import free_port  # noqa: E402

TRANSACTION = {
    "transaction_id": "bench-0",
    "customer_id": "C000001",
    "merchant_id": "M00001",
    "amount": 42.5,
    "currency": "EUR",
    "timestamp": "2026-11-27T06:00:00Z",
    "channel": "online",
    "merchant_category": "grocery",
    "country": "FR",
}


def score_body(transaction: dict | None = None) -> bytes:
    return json.dumps({"transaction": transaction or TRANSACTION}).encode()


# --- the service under test -------------------------------------------------------------------------
@dataclass
class Service:
    """``bentoml serve <target> --port <free port>`` as a subprocess (own process group)."""

    target: str  # e.g. benchmarks.floor_service:FloorScorer
    cwd: Path = ROOT
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Service:
        self.port = free_port()
        bentoml = Path(sys.executable).with_name("bentoml")
        log = open(self.log_path or os.devnull, "ab")  # noqa: SIM115 - the server's, kept open
        self.proc = subprocess.Popen(
            [str(bentoml), "serve", self.target, "--port", str(self.port)],
            cwd=self.cwd,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited ({self.proc.returncode}); log: {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.target} not ready in {timeout} s; log: {self.log_path}")

    def workers(self) -> list[psutil.Process]:
        """The worker processes: those of the tree running BentoML's worker module (not the arbiter,
        and not the sidecar process each real worker starts)."""
        assert self.proc is not None
        tree = psutil.Process(self.proc.pid).children(recursive=True)
        return [p for p in tree if "_bentoml_impl.worker" in " ".join(p.cmdline())]

    def rss_mib(self) -> float:
        """The workers' resident memory, with their children's (the real service's prediction-log
        process: a leak there counts too)."""
        processes = [q for worker in self.workers() for q in (worker, *worker.children(recursive=True))]
        return sum(p.memory_info().rss for p in processes) / 2**20

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- load generation -------------------------------------------------------------------------------
@dataclass
class Result:
    rate: float  # offered requests/s (0: closed loop)
    seconds: float
    latencies_ms: np.ndarray
    lag_ms: np.ndarray
    errors: int
    statuses: dict[int, int]  # HTTP status → count; -1: connection error, -2: not sent (too many open)
    failures: dict[str, int] = field(default_factory=dict)  # exception name → count

    @property
    def sent(self) -> int:
        return len(self.latencies_ms) + self.errors

    def summary(self) -> dict[str, float | int]:
        lat = self.latencies_ms if len(self.latencies_ms) else np.array([float("nan")])
        return {
            "offered_rps": round(self.rate, 1),
            "rps": round(len(self.latencies_ms) / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "max_ms": round(float(np.max(lat)), 2),
            "errors": self.errors,
            "lag_p99_ms": round(float(np.percentile(self.lag_ms, 99)), 2) if len(self.lag_ms) else 0.0,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            **({"failures": self.failures} if self.failures else {}),
        }


def merge(results: list[Result]) -> Result:
    """One result of several runs at the same rate (latencies pooled, counts summed)."""
    statuses: dict[int, int] = {}
    failures: dict[str, int] = {}
    for r in results:
        for k, v in r.statuses.items():
            statuses[k] = statuses.get(k, 0) + v
        for name, v in r.failures.items():
            failures[name] = failures.get(name, 0) + v
    return Result(
        results[0].rate,
        sum(r.seconds for r in results),
        np.concatenate([r.latencies_ms for r in results]),
        np.concatenate([r.lag_ms for r in results]),
        sum(r.errors for r in results),
        statuses,
        failures,
    )


KEEPALIVE_SECONDS = 4.0  # reuse a connection only if it was used this recently (uvicorn's keep-alive: 5 s)


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.perf_counter()

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


def _raw_request(host: str, port: int, path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _drive(
    url: str, path: str, body: bytes, rate: float, seconds: float, concurrency: int, max_connections: int
) -> Result:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raw = _raw_request(host, port, path, body)
    idle: list[_Conn] = []
    open_conns = 0
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    failures: dict[str, int] = {}
    errors = 0

    async def one(due: float) -> None:
        nonlocal open_conns, errors
        conn = None
        while idle:  # most recently used first; uvicorn closes keep-alive connections idle for 5 s
            conn = idle.pop()
            if time.perf_counter() - conn.used < KEEPALIVE_SECONDS:
                break
            conn.close()
            open_conns -= 1
            conn = None
        try:
            if conn is None:
                open_conns += 1
                conn = _Conn(*await asyncio.open_connection(host, port))
            lags.append(time.perf_counter() - due)
            status = await conn.request(raw)
        except Exception as exc:
            errors += 1
            statuses[-1] = statuses.get(-1, 0) + 1
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            if conn is not None:
                conn.close()
            open_conns -= 1
            return
        done = time.perf_counter()
        conn.used = done
        statuses[status] = statuses.get(status, 0) + 1
        if status == 200:
            latencies.append(done - due)
        else:
            errors += 1
        idle.append(conn)

    start = time.perf_counter() + 0.05
    tasks: set[asyncio.Task] = set()
    if rate > 0:  # open loop: request i is due at start + i / rate
        n = int(rate * seconds)
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if open_conns >= max_connections and not idle:
                errors += 1  # the service is so far behind that the generator gives up on this one
                statuses[-2] = statuses.get(-2, 0) + 1
                continue
            t = asyncio.create_task(one(due))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        elapsed = time.perf_counter() - start
    else:  # closed loop, for the maximum throughput: `concurrency` connections back to back
        stop_at = start + seconds

        async def loop() -> None:
            while time.perf_counter() < stop_at:
                await one(time.perf_counter())

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    for c in idle:
        c.close()
    return Result(
        rate, elapsed, np.array(latencies) * 1000, np.array(lags) * 1000, errors, statuses, failures
    )


def drive(
    url: str,
    rate: float,
    seconds: float,
    *,
    path: str = "/score",
    body: bytes | None = None,
    concurrency: int = 32,
    max_connections: int = 512,
) -> Result:
    """Open loop at ``rate`` requests/s for ``seconds`` (``rate`` 0: closed loop, ``concurrency``
    connections)."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_drive(url, path, body or score_body(), rate, seconds, concurrency, max_connections))
