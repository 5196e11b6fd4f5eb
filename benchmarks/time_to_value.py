"""Time to value (issue 15): how long a new user waits, from a fresh clone, until every UI answers and the
first live prediction is logged.

The current checkout's commit is cloned (``git clone``) into a temporary folder, and ``make demo`` runs
there, install included (a venv, uv, ``uv sync`` from the lock), with its own data directory (the
clone's ``.rtml``) and free ports, never the default ones a developer's demo may hold. Measured from the
start of ``make demo``:

* ``install_seconds``: until the venv is synced (``.venv/.synced``);
* ``seconds_to_<url>`` and ``seconds_to_all_urls``: until each URL answers (any HTTP status: the scoring
  API's ``/readyz`` says 503 until a model is in production, and the URL answers all the same) —
  Dagster UI ``/server_info``, scoring API ``/livez``, MLflow ``/health``, dbt docs ``/``;
* ``seconds_to_first_live_prediction``: until ``monitoring.predictions`` holds a row. The demo's own
  traffic (``rtml traffic``, when the demo starts it) makes it; without that, once the scorer is ready
  (``/readyz`` 200) and no row came within ``--traffic-wait`` seconds, this script posts one ``/score``
  itself (``first_prediction_by`` says which).

Then ``make demo`` is stopped as a terminal's Ctrl-C does (SIGINT to its process group). Ends with one
JSON line. Needs only Python 3.11, git and make (the clone installs the rest).

    python3 benchmarks/time_to_value.py [--timeout 900] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from _machine import json_line, load_average

ROOT = Path(__file__).resolve().parent.parent
COUNT_PREDICTIONS = """
import sys, psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3) as conn:
    exists = conn.execute("select to_regclass('monitoring.predictions')").fetchone()[0]
    print(conn.execute("select count(*) from monitoring.predictions").fetchone()[0] if exists else 0)
"""


def free_port() -> int:
    """A free port below the ephemeral range (as ``rtml.stack.processes.free_port``; stdlib only)."""
    for _ in range(200):
        port = 20_000 + int.from_bytes(os.urandom(2)) % 12_000
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def answers(url: str) -> int | None:
    """The HTTP status of ``url``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            response.read()  # the whole answer: a probe that hangs up early breaks the server's pipe
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def predictions(clone: Path) -> int:
    """Rows in the clone's prediction log (0 until its database and table exist)."""
    state = clone / ".rtml" / "stack.json"
    python = clone / ".venv" / "bin" / "python"
    if not state.exists() or not python.exists():
        return 0
    postgres = (json.loads(state.read_text()).get("postgres") or {}).get("url")
    if not postgres:
        return 0
    proc = subprocess.run([python, "-c", COUNT_PREDICTIONS, postgres], capture_output=True, text=True)
    return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0


def score_one(api: str) -> int | None:
    """One transaction of now to ``POST /score``: the status."""
    body = {
        "transaction_id": f"ttv-{time.time_ns()}",
        "customer_id": "c0005263",
        "merchant_id": "m000267",
        "amount": 42.5,
        "currency": "EUR",
        "timestamp": datetime.now(UTC).isoformat(),
        "channel": "online",
    }
    request = urllib.request.Request(
        f"{api}/score", json.dumps({"transaction": body}).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    parser.add_argument("--traffic-wait", type=float, default=20, help="see the module's docstring")
    parser.add_argument("--keep", action="store_true", help="keep the clone (and its logs)")
    parser.add_argument(
        "--cold-cache", action="store_true", help="install with an empty uv cache (a new machine's download)"
    )
    parser.add_argument(
        "--screenshots",
        action="store_true",
        help="once the first prediction is logged, take the README's pictures (docs/screenshots.py, with "
        "this checkout's .venv)",
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rtml-ttv-"))
    clone = workdir / "rtml"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit.strip()], cwd=clone, check=True)
    ports = {name: free_port() for name in ("DAGSTER", "SERVING", "DOCS", "MLFLOW")}
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RTML_", "DAGSTER_"))}
    env.pop("MLFLOW_TRACKING_URI", None)
    env |= {f"RTML_{name}_PORT": str(port) for name, port in ports.items()}
    if args.cold_cache:
        env["UV_CACHE_DIR"] = str(workdir / "uv-cache")
    urls = {
        "dagster_ui": f"http://127.0.0.1:{ports['DAGSTER']}/server_info",
        "scoring_api": f"http://127.0.0.1:{ports['SERVING']}/livez",
        "mlflow_ui": f"http://127.0.0.1:{ports['MLFLOW']}/health",
        "dbt_docs": f"http://127.0.0.1:{ports['DOCS']}/",
    }
    api = f"http://127.0.0.1:{ports['SERVING']}"
    print(f"commit {commit.strip()[:12]} cloned into {clone}; ports {ports}", flush=True)

    log = workdir / "make-demo.log"
    began = time.monotonic()
    with log.open("wb") as out:
        demo = subprocess.Popen(
            ["make", "demo"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    load_start = load_average()  # 2 cores: other work on the machine slows every figure
    figures: dict[str, object] = {"install_seconds": None}
    first_answer: dict[str, float] = {}
    first_prediction: float | None = None
    ready: float | None = None
    by = None
    try:
        while first_prediction is None:
            now = time.monotonic() - began
            if demo.poll() is not None:
                raise RuntimeError(f"make demo exited ({demo.returncode}):\n{log.read_text()[-3000:]}")
            if now > args.timeout:
                raise TimeoutError(f"not done within {args.timeout:.0f} s:\n{log.read_text()[-3000:]}")
            if figures["install_seconds"] is None and (clone / ".venv" / ".synced").exists():
                figures["install_seconds"] = round(now, 1)
                print(f"{now:6.1f} s  installed", flush=True)
            for name, url in urls.items():
                if name not in first_answer and answers(url) is not None:
                    first_answer[name] = now
                    print(f"{now:6.1f} s  {name} answers ({url})", flush=True)
            if ready is None and answers(f"{api}/readyz") == 200:
                ready = now
                print(f"{now:6.1f} s  scoring API ready (a production model is loaded)", flush=True)
            if first_answer.get("scoring_api") is not None and predictions(clone) > 0:
                first_prediction, by = now, by or "the demo's traffic"
                print(f"{now:6.1f} s  first live prediction logged ({by})", flush=True)
                break
            if ready is not None and by is None and now - ready > args.traffic_wait:
                by = "this benchmark's POST /score (no demo traffic within --traffic-wait)"
                print(f"{now:6.1f} s  POST /score → {score_one(api)}", flush=True)
            time.sleep(0.5)
        if args.screenshots:
            base = {name: url.rsplit("/", 1)[0] for name, url in urls.items()}
            command = [ROOT / ".venv" / "bin" / "python", ROOT / "docs" / "screenshots.py"]
            command += ["--dagster", base["dagster_ui"], "--api", base["scoring_api"]]
            command += ["--mlflow", base["mlflow_ui"], "--docs", base["dbt_docs"]]
            subprocess.run(command, check=False)
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches make and rtml
        stopped = time.monotonic()
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
        print(f"make demo stopped {time.monotonic() - stopped:.1f} s after SIGINT (log: {log})", flush=True)
        subprocess.run([clone / ".venv" / "bin" / "rtml", "down"], cwd=clone, env=env, capture_output=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    figures |= {f"seconds_to_{name}": round(seconds, 1) for name, seconds in first_answer.items()}
    figures["seconds_to_all_urls"] = round(max(first_answer.values()), 1) if len(first_answer) == 4 else None
    figures["seconds_to_scorer_ready"] = round(ready, 1) if ready is not None else None
    figures["seconds_to_first_live_prediction"] = round(first_prediction, 1)
    figures["first_prediction_by"] = by
    print(json_line(figures, load_start))


if __name__ == "__main__":
    main()
