"""The scoring service's processes: packaging the production model into a bento
(``python -m rtml.serving.package`` then ``bentoml build``) and ``bentoml serve``. Both run as programs,
so nothing in the platform's core imports BentoML or ``rtml.serving``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rtml.config import Settings
from rtml.stack.processes import spawn

SOURCE_ROOT = Path(__file__).resolve().parents[2]
"""``platform/``, where ``rtml`` lives: the build context (already on ``sys.path``, so BentoML adding it
there shadows nothing; the bento copies no source, see ``bentofile.yaml``)."""
BENTOFILE = SOURCE_ROOT / "rtml" / "serving" / "bentofile.yaml"  # by path: rtml.serving is not imported
SERVICE = "rtml.serving.service:FraudScorer"
BENTO_NAME = "fraud_scorer"


class BentoBuildError(RuntimeError):
    pass


def serving_env(settings: Settings, database_url: str, redis_url: str, tracking_uri: str) -> dict[str, str]:
    """The scorer's environment: the stack's servers and a BentoML store under the data directory."""
    return {
        **os.environ,
        "RTML_DATABASE_URL": database_url,
        "RTML_REDIS_URL": redis_url,
        "RTML_MLFLOW_TRACKING_URI": tracking_uri,
        "RTML_MODEL_NAME": settings.training.model_name,
        "RTML_SIM_START": settings.simulator.start.isoformat(),  # the stack's window, live or pinned
        # absolute: a bento's service runs in the bento's own folder (the prediction log spills here)
        "RTML_DATA_DIR": str(settings.services.home),
        "BENTOML_HOME": str(settings.services.bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
    }


def build_bento(env: dict[str, str]) -> tuple[str, str]:
    """Import the production version into the BentoML store and build the bento around it:
    (bento tag, BentoML model tag)."""
    model_tag = _run([sys.executable, "-m", "rtml.serving.package"], env).strip().splitlines()[-1]
    built = _run(
        [_bin("bentoml"), "build", "-f", str(BENTOFILE), "-o", "tag", str(SOURCE_ROOT)],
        {**env, "RTML_SERVING_BENTO_MODEL": model_tag},
    )
    bento_tag = built.strip().splitlines()[-1].removeprefix("__tag__:")
    return bento_tag, model_tag


def has_bento(bentoml_home: Path) -> bool:
    """Whether the store holds a build of the scoring service (``fraud_scorer_bento`` made one)."""
    return any(path.is_dir() for path in (bentoml_home / "bentos" / BENTO_NAME).glob("*"))


def start(env: dict[str, str], bento: str, port: int, log_dir: Path) -> subprocess.Popen[bytes]:
    """``bentoml serve`` of ``bento`` (a tag, e.g. ``fraud_scorer:latest``) in a session of its own;
    it is ready once ``/readyz`` answers (``dagster_processes.wait_for_http``)."""
    command = [_bin("bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)]
    return spawn(command, env, log_dir / "scoring-service.log")


def start_from_source(env: dict[str, str], port: int, log_dir: Path) -> subprocess.Popen[bytes]:
    """``bentoml serve`` of the service's source (``rtml.serving.service``), for a stack without a bento
    yet: it answers at once, and ``/readyz`` says ready once the version holding ``production`` is
    loaded (its registry poller picks it up within ``serving_model_poll_seconds``)."""
    command = [_bin("bentoml"), "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)]
    return spawn(command, env, log_dir / "scoring-service.log")


def _run(command: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=SOURCE_ROOT)
    if proc.returncode != 0:
        raise BentoBuildError(
            f"{' '.join(command[:3])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))
