"""A real monitoring stack for tests: Debian's Prometheus, Alertmanager, Pushgateway and exporters as
processes on free ports, with the repository's rules and Alertmanager route, and a webhook receiver (a
small HTTP server in the test: the one fake, standing for the notification channel outside).

Skips with an install hint where a binary is missing (CI installs them: ``.ci/run``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rtml.stack.processes import free_port, stop_tree
from tests import local_http

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "monitoring"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"monitoring test needs `{name}`: apt-get install -y {name.split('-exporter')[0]}")
    return path


@dataclass
class Process:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@dataclass
class Webhook:
    """Records every JSON body POSTed to it (Alertmanager's webhook payloads)."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)

    def alert_names(self, status: str = "firing") -> set[str]:
        return {
            alert["labels"]["alertname"]
            for body in list(self.received)
            for alert in body.get("alerts", [])
            if alert.get("status") == status
        }


@contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hook.received.append(json.loads(body or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()


def start(
    name: str, argv: list[str], url: str, ready_path: str, log_dir: Path, env: dict | None = None
) -> Process:
    log = log_dir / f"{name}.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    process = Process(name, url, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{process.tail()}")
        try:
            if local_http.get(url + ready_path, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_tree(proc.pid)
    raise AssertionError(f"{name} not ready after 60 s:\n{process.tail()}")


@contextmanager
def pushgateway(work: Path) -> Iterator[Process]:
    """A Pushgateway of the test's own (its state in ``work``, not Debian's shared default file)."""
    port = free_port()
    process = start(
        "pushgateway",
        [
            binary("prometheus-pushgateway"),
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={work / 'pushgateway.data'}",
        ],
        f"http://127.0.0.1:{port}",
        "/-/ready",
        work,
    )
    try:
        yield process
    finally:
        stop_tree(process.proc.pid)


def scrape(url: str) -> dict[str, float]:
    """A /metrics page as {'name{labels}': value} (labels as exposed, sorted by the exporter)."""
    out = {}
    for line in local_http.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def pushed_series(gateway_url: str, group: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The ``rtml_*`` series the Pushgateway holds for the group ``asset=<group>``, parsed by
    prometheus_client: {(name, labels without job/asset/instance): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = local_http.get(f"{gateway_url}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            if sample.name.startswith("rtml_") and labels.pop("asset", None) == group:
                assert labels.pop("job") == "rtml"
                labels.pop("instance", None)
                out[sample.name, frozenset(labels.items())] = sample.value
    return out


@dataclass
class MonitoringStack:
    prometheus: Process
    alertmanager: Process
    pushgateway: Process
    exporters: list[Process]
    webhook: Webhook

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = local_http.get(f"{self.prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body.get("status") == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def firing(self) -> set[str]:
        body = local_http.get(f"{self.prometheus.url}/api/v1/alerts", timeout=10).json()
        return {a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == "firing"}


@contextmanager
def monitoring_stack(
    *,
    scorer_urls: list[str],
    redis_url: str,
    database_url: str,
    work: Path,
    interval: str = "1s",
    stream_worker_env: dict[str, str] | None = None,
    stream_lander_env: dict[str, str] | None = None,
) -> Iterator[MonitoringStack]:
    """Everything ``monitoring/prometheus/prometheus.yml`` scrapes, on this machine: the scorer, a
    Pushgateway, node/redis/postgres exporters, with ``stream_worker_env`` a stream worker (``rtml
    stream run`` in that environment, applying what the scorers publish) and with ``stream_lander_env`` a
    lander (``rtml stream land``, landing it; the environment sets ``RTML_TRANSACTIONS_FEED=stream`` and
    its database); Prometheus evaluating the
    repository's rules every ``interval`` and sending alerts to an Alertmanager whose route is the
    repository's, with the webhook URL pointed at the test's receiver."""
    started: list[Process] = []
    with webhook_receiver() as hook:
        try:
            pushgateway_port, am_port, prom_port = free_port(), free_port(), free_port()
            pushgateway = start(
                "pushgateway",
                [
                    binary("prometheus-pushgateway"),
                    f"--web.listen-address=127.0.0.1:{pushgateway_port}",
                    # Debian's default persists to /var/lib/prometheus: shared with whoever else runs one
                    f"--persistence.file={work / 'pushgateway.data'}",
                ],
                f"http://127.0.0.1:{pushgateway_port}",
                "/-/ready",
                work,
            )
            started.append(pushgateway)
            exporters = []
            for name, argv, env in (
                ("node-exporter", [binary("prometheus-node-exporter")], None),
                ("redis-exporter", [binary("prometheus-redis-exporter"), "-redis.addr", redis_url], None),
                (
                    "postgres-exporter",
                    [binary("prometheus-postgres-exporter")],
                    {"DATA_SOURCE_NAME": _dsn(database_url), "PATH": "/usr/bin:/bin"},
                ),
            ):
                port = free_port()
                flag = "-web.listen-address" if name == "redis-exporter" else "--web.listen-address"
                exporter = start(
                    name,
                    [*argv, f"{flag}=127.0.0.1:{port}"],
                    f"http://127.0.0.1:{port}",
                    "/metrics",
                    work,
                    env,
                )
                started.append(exporter)
                exporters.append(exporter)

            am_config = yaml.safe_load((MONITORING / "alertmanager" / "alertmanager.yml").read_text())
            for receiver in am_config["receivers"]:
                for hook_config in receiver.get("webhook_configs", []):
                    hook_config["url"] = hook.url
            am_config["route"]["group_wait"] = "1s"
            am_config["route"]["group_interval"] = "1s"
            (work / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
            alertmanager = start(
                "alertmanager",
                [
                    binary("prometheus-alertmanager"),
                    f"--config.file={work / 'alertmanager.yml'}",
                    f"--storage.path={work / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                f"http://127.0.0.1:{am_port}",
                "/-/ready",
                work,
            )
            started.append(alertmanager)

            targets = {
                "scorer": scorer_urls,
                "pushgateway": [pushgateway.url],
                **{e.name: [e.url] for e in exporters},
            }
            # the stream's consumers, each serving its metrics on a port of its own
            for job, command, env in (
                ("stream-worker", "run", stream_worker_env),
                ("stream-lander", "land", stream_lander_env),
            ):
                if env is None:
                    continue
                port = free_port()
                consumer = start(
                    job,
                    [sys.executable, "-m", "rtml.cli", "stream", command, "--metrics-port", str(port)],
                    f"http://127.0.0.1:{port}",
                    "/metrics",
                    work,
                    env,
                )
                started.append(consumer)
                targets[job] = [consumer.url]
            config = {
                "global": {"scrape_interval": interval, "evaluation_interval": interval},
                "rule_files": [str(MONITORING / "prometheus" / "rules" / "*.yml")],
                "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                "scrape_configs": [
                    {
                        "job_name": job,
                        "honor_labels": job == "pushgateway",
                        "static_configs": [{"targets": [url.removeprefix("http://") for url in urls]}],
                    }
                    for job, urls in targets.items()
                ],
            }
            (work / "prometheus.yml").write_text(yaml.safe_dump(config))
            prometheus = start(
                "prometheus",
                [
                    binary("prometheus"),
                    f"--config.file={work / 'prometheus.yml'}",
                    f"--storage.tsdb.path={work / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                f"http://127.0.0.1:{prom_port}",
                "/-/ready",
                work,
            )
            started.append(prometheus)
            yield MonitoringStack(prometheus, alertmanager, pushgateway, exporters, hook)
        finally:
            for process in reversed(started):
                stop_tree(process.proc.pid)


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL) of every committed Grafana panel (``monitoring/grafana``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rtml_dashboards", MONITORING / "grafana" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.panel_queries())


def _dsn(database_url: str) -> str:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    return url + ("&" if "?" in url else "?") + "sslmode=disable"
