"""CI/CD and the compose stack, checked without Docker or GitHub: the workflows pass actionlint, the compose
file validates against the Compose Specification (check-jsonschema's vendored schema), everything the
workflows and the compose services run or mount exists in the project, and the deploy script's rollback
restores the previous release (run against stand-ins for ssh and docker).

actionlint, zizmor and check-jsonschema are dev dependencies; a missing one skips its test (and so fails CI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.isolation import check_disposable

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_NAMES = ("test", "build", "deploy", "train")
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
DEPLOY_SCRIPT = ROOT / "docker" / "deploy.sh"
VENV_BIN = Path(sys.executable).parent

# What the stack publishes on the host: the UIs and the scoring API, nothing else.
PUBLISHED = {
    ("dagster-webserver", 3000): "3000",
    ("scorer", 3001): "3001",
    ("mlflow", 5000): "5000",
    ("grafana", 3000): "3002",
    ("prometheus", 9090): "9090",
}


# --- helpers -------------------------------------------------------------------------------------------
def tool(name: str) -> str:
    """The project environment's ``name`` (the pinned dev dependency), else the one on PATH; skip if none."""
    candidate = VENV_BIN / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if found is None:
        pytest.skip(
            f"{name} not found in {VENV_BIN} or on PATH: it is a dev dependency of the project (uv sync), "
            "or install it into any environment on PATH"
        )
    return found


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("cwd", ROOT)
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{' '.join(map(str, proc.args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"


def workflow(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / f"{name}.yaml").read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def run_scripts(data: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(job id, script) of every `run:` step."""
    for job_id, job in data["jobs"].items():
        for step in job.get("steps", []):
            if "run" in step:
                yield job_id, step["run"]


def all_run_text(data: dict[str, Any]) -> str:
    return "\n".join(script for _, script in run_scripts(data))


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``$$``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        value = env.get(name)
        if operator in (":-", "-") and (value is None or (operator == ":-" and value == "")):
            return argument
        if operator in (":?", "?") and (value is None or (operator == ":?" and value == "")):
            raise KeyError(f"{name}: {argument}")
        return value or ""

    return VARIABLE.sub(replace, text)


def compose_variables() -> list[tuple[str, str | None]]:
    """(name, operator) of every substitution in the compose file (comments left out)."""
    text = "\n".join(
        line.split(" #")[0] for line in COMPOSE.read_text().splitlines() if not line.startswith("#")
    )
    return [(m.group(1) or m.group(4), m.group(2)) for m in VARIABLE.finditer(text) if m.group(0) != "$$"]


def compose() -> dict[str, Any]:
    """The compose file as `docker compose config` would see it with .env made from .env.example."""
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env_example()))
    return data


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*[:?]?=\s*(.*)$", text, re.MULTILINE))

    def expand(value: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: expand(variables.get(m.group(1), "")), value)

    targets = set()
    for match in re.finditer(r"^([^\s#:=][^:=]*?)\s*:(?!=)", text, re.MULTILINE):
        targets.update(expand(match.group(1)).split())
    return targets - {".PHONY"}


def cli_commands() -> set[str]:
    import typer

    from rtml.cli import app

    commands = getattr(typer.main.get_command(app), "commands", None)  # a group: one command per name
    assert commands, "rtml.cli.app has no commands"
    return set(commands)


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE | re.IGNORECASE))


def commands_in(script: str) -> dict[str, set[str]]:
    """What a shell script runs, by kind: make targets, rtml commands, .venv/bin tools, scripts."""
    found: dict[str, set[str]] = {"make": set(), "rtml": set(), "venv": set(), "script": set()}
    for line in script.splitlines():
        line = line.split(" #")[0]
        for match in re.finditer(r"(?:^|[\s;&|(])make((?:\s+[^\s;&|)]+)+)", line):
            words = [w for w in match.group(1).split() if not w.startswith("-") and "=" not in w]
            found["make"].update(words)
        found["rtml"].update(re.findall(r"(?:^|[\s;&|(])(?:\S*/)?rtml\s+([a-z][\w-]*)", line))
        found["venv"].update(re.findall(r"\.venv/bin/([\w.-]+)", line))
        found["script"].update(
            re.findall(
                r"(?:^|[\s;&|(])(?:python3?\s+|bash\s+|sh\s+)?((?:\./)?[\w-]+(?:/[\w.-]+)+\.(?:sh|py))\b",
                line,
            )
        )
    return found


# --- workflows -----------------------------------------------------------------------------------------
def test_the_four_workflows_exist() -> None:
    assert sorted(p.stem for p in WORKFLOWS.glob("*.y*ml")) == sorted(WORKFLOW_NAMES)


def test_actionlint_passes_on_every_workflow() -> None:
    proc = run([tool("actionlint"), "-no-color"])
    assert proc.returncode == 0, output(proc)


def test_actions_are_pinned_by_commit_sha_with_their_version() -> None:
    """Issue 19: a tag can be moved to other code; a commit cannot. The version stays readable beside it
    (Dependabot and zizmor read the same comment)."""
    loose = []
    for name in WORKFLOW_NAMES:
        text = (WORKFLOWS / f"{name}.yaml").read_text()
        for line in text.splitlines():
            if re.match(r"\s*(- )?uses:", line) and not re.fullmatch(
                r"\s*(- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40}  # v\d+\.\d+\.\d+", line
            ):
                loose.append(f"{name}.yaml: {line.strip()}")
    assert not loose, loose


def test_checkouts_keep_no_credentials_and_each_job_names_its_permissions() -> None:
    write_scopes = {}
    for name in WORKFLOW_NAMES:
        data = workflow(name)
        assert data["permissions"] == {}, f"{name}.yaml: workflow-wide permissions"
        for job_id, job in data["jobs"].items():
            assert "permissions" in job, f"{name}.yaml {job_id}: no permissions of its own"
            write_scopes.update(
                {(name, job_id, scope): 1 for scope, level in job["permissions"].items() if level == "write"}
            )
            for step in job.get("steps", []):
                if str(step.get("uses", "")).startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False, f"{name}.yaml {job_id}"
    # packages: write only where images are pushed, pull-requests: write only where the comment is made
    assert set(write_scopes) == {("build", "image", "packages"), ("train", "comment", "pull-requests")}
    comment = workflow("train")["jobs"]["comment"]
    assert not any("run" in step for step in comment["steps"])  # it runs nothing from the pull request


def test_zizmor_finds_nothing_in_the_workflows() -> None:
    proc = run([tool("zizmor"), "--offline", "--no-progress", str(WORKFLOWS)])
    assert proc.returncode == 0, output(proc)


def test_every_command_the_workflows_run_exists() -> None:
    """make targets against the Makefile, rtml commands against the typer app, .venv/bin tools against
    the project environment, scripts against the repository."""
    targets, commands = makefile_targets(), cli_commands()
    used: dict[str, set[str]] = {"make": set(), "rtml": set(), "venv": set(), "script": set()}
    missing = []
    for name in WORKFLOW_NAMES:
        for job_id, script in run_scripts(workflow(name)):
            found = commands_in(script)
            where = f"{name}.yaml job {job_id}"
            missing += [f"{where}: make {t}" for t in found["make"] if t not in targets]
            missing += [f"{where}: rtml {c}" for c in found["rtml"] if c not in commands]
            missing += [f"{where}: .venv/bin/{t}" for t in found["venv"] if not (VENV_BIN / t).exists()]
            missing += [f"{where}: {s}" for s in found["script"] if not (ROOT / s).is_file()]
            for kind, values in found.items():
                used[kind] |= values
    assert not missing, f"the workflows run what the project does not have: {missing}"
    # the parser did find what the workflows are known to run
    assert {"test", "lint", ".venv/.synced"} <= used["make"], used
    assert {"demo", "rollback", "status", "models"} <= used["rtml"], used
    assert "rtml" in used["venv"] and "docker/deploy.sh" in used["script"], used


def test_workflow_command_parser() -> None:
    found = commands_in(
        "make test PYTEST_ARGS=-x && make -j2 lint\n.venv/bin/rtml demo >log &\n"
        "docker/deploy.sh run rtml rollback --approver a  # make nothing\nbash docker/release-tag.sh"
    )
    assert found == {
        "make": {"test", "lint"},
        "rtml": {"demo", "rollback"},
        "venv": {"rtml"},
        "script": {"docker/deploy.sh", "docker/release-tag.sh"},
    }


def test_test_workflow_lints_and_runs_the_suite_like_make_test() -> None:
    data = workflow("test")
    assert {"pull_request", "push"} <= set(data["on"])
    jobs = data["jobs"]
    assert "make lint" in all_run_text({"jobs": {"lint": jobs["lint"]}})
    suite = jobs["test"]
    assert suite["services"]["postgres"]["image"] == "postgres:15.10-bookworm"
    assert suite["services"]["redis"]["image"] == "redis:7.4.1-bookworm"
    # the services through the test session's explicit opt-in (tests/isolation.py), disposable names only
    assert suite["env"]["RTML_TEST_DATABASE_URL"].startswith("postgresql://")
    assert suite["env"]["RTML_TEST_REDIS_URL"].startswith("redis://")
    check_disposable({k.replace("RTML_TEST_", "RTML_"): v for k, v in suite["env"].items()})
    scripts = [script for _, script in run_scripts({"jobs": {"test": suite}})]
    assert "make test" in scripts  # the same command as on a developer's machine
    # the Debian packages .ci/run installs for the suite are installed here too
    ci_run = (ROOT / ".ci" / "run").read_text()
    packages = re.search(r"debian_packages=\(([^)]*)\)", ci_run)
    assert packages, ".ci/run lists no debian_packages"
    install = next(s for s in scripts if "apt-get install" in s)
    assert set(packages.group(1).split()) <= set(install.replace("\\", " ").split())
    # dbt build on the demo window: the demo's load materializes the dbt assets (`dbt build`)
    assert "rtml demo" in all_run_text({"jobs": {"demo": jobs["demo"]}})


def test_build_pushes_both_images_tagged_with_the_commit_on_main() -> None:
    data = workflow("build")
    assert data["on"]["push"]["branches"] == ["main"]
    assert data["jobs"]["image"]["permissions"]["packages"] == "write"
    job = data["jobs"]["image"]
    targets = {entry["target"] for entry in job["strategy"]["matrix"]["include"]}
    assert targets == {"platform", "scorer"} <= dockerfile_targets()
    builds = [s for s in job["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    pushed = [s for s in builds if s["with"].get("push") is True]
    assert len(pushed) == 1 and "main" in pushed[0]["if"], "push only on main"
    assert all(s["with"]["file"] == "docker/Dockerfile" for s in builds)
    assert "${{ github.sha }}" in pushed[0]["with"]["tags"]
    assert "ghcr.io/" in all_run_text(data)


def test_the_scorer_image_holds_the_serving_group_alone_and_its_entrypoint_is_smoke_tested() -> None:
    """Issue 19: the scorer image is pyproject's `serving` group (what FraudScorer imports) and the rtml
    source, not the platform's environment; build.yaml runs its real entrypoint against PostgreSQL and Redis
    (docker/smoke-scorer.sh). That environment serving real scores: tests/test_serving.py."""
    text = DOCKERFILE.read_text()
    scorer = text[text.index(" AS scorer") :]
    assert "FROM runtime AS scorer" in text, "the scorer must not start from the platform's environment"
    assert "uv sync --frozen --only-group serving --no-install-project" in scorer
    assert "COPY --from=base /app/.venv" not in scorer and "PYTHONPATH=/app/platform" in scorer
    group = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["serving"]
    names = {re.split(r"[\[=<>]", requirement)[0] for requirement in group}
    assert "bentoml" in names and not names & {
        "dagster",
        "dbt-core",
        "evidently",
        "dvc",
        "mlflow",
        "matplotlib",
    }
    steps = workflow("build")["jobs"]["image"]["steps"]
    smoke = [step for step in steps if "docker/smoke-scorer.sh" in step.get("run", "")]
    assert len(smoke) == 1 and smoke[0]["if"] == "matrix.target == 'scorer'"
    script = (ROOT / "docker" / "smoke-scorer.sh").read_text()
    for probe in ("/livez", "/readyz", "/score", "/metrics", "docker stop"):
        assert probe in script, probe
    assert subprocess.run(["bash", "-n", str(ROOT / "docker" / "smoke-scorer.sh")]).returncode == 0


def test_deploy_goes_to_staging_then_to_production_through_an_environment() -> None:
    data = workflow("deploy")
    trigger = data["on"]["workflow_run"]
    assert trigger["workflows"] == [workflow("build")["name"]] and trigger["types"] == ["completed"]
    assert trigger["branches"] == ["main"]
    jobs = data["jobs"]
    assert jobs["staging"]["environment"]["name"] == "staging"
    assert "success" in jobs["staging"]["if"]
    production = jobs["production"]
    assert production["environment"]["name"] == "production"  # required reviewers are configured there
    assert production["needs"] == "staging"
    for job in ("staging", "production"):
        assert 'docker/deploy.sh up "$commit"' in all_run_text({"jobs": {job: jobs[job]}})


def test_deploy_has_a_rollback_path() -> None:
    data = workflow("deploy")
    inputs = data["on"]["workflow_dispatch"]["inputs"]
    assert "rollback" in inputs["action"]["options"]
    rollback = data["jobs"]["rollback"]
    assert "workflow_dispatch" in rollback["if"] and "rollback" in rollback["if"]
    text = all_run_text({"jobs": {"rollback": rollback}})
    assert "docker/deploy.sh previous" in text  # the newest good release before the current one ...
    assert 'docker/deploy.sh rollback "$commit"' in text  # ... checked (release-tag.sh) and redeployed
    assert "rtml rollback --approver" in text  # and the model's production alias moved back


def test_train_workflow_reproduces_the_dvc_pipeline_and_reports_metrics() -> None:
    data = workflow("train")
    paths = data["on"]["pull_request"]["paths"]
    assert {"dvc.lock", "dbt_project/models/**", "platform/rtml/training/**"} <= set(paths)
    dvc_pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for stage in dvc_pipeline["stages"].values():  # every code dependency of a stage triggers the workflow
        for dep in stage.get("deps", []):
            if not dep.startswith("data/"):
                assert any(dep == p or (p.endswith("/**") and f"{dep}/".startswith(p[:-2])) for p in paths), (
                    dep
                )
    text = all_run_text(data)
    assert "dvc repro" in text and 'dvc metrics diff "$BASE"' in text
    assert data["jobs"]["comment"]["permissions"] == {"pull-requests": "write"}
    assert data["jobs"]["comment"]["needs"] == "repro"
    steps = data["jobs"]["comment"]["steps"]
    assert any(str(s.get("uses", "")).startswith("actions/github-script@") for s in steps)


def test_make_lint_runs_actionlint_and_the_compose_validation() -> None:
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", text, re.MULTILINE)
    assert recipe, "no lint target"
    lines = recipe.group(1)
    commands = ("ruff check", "ruff format --check", "mypy", "actionlint", "zizmor", "vendor.compose-spec")
    for command in commands:
        assert command in lines, f"make lint does not run {command}"


# --- compose -------------------------------------------------------------------------------------------
def test_compose_file_validates_against_the_compose_specification() -> None:
    proc = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert proc.returncode == 0, output(proc)


def test_compose_runs_the_whole_stack() -> None:
    assert set(services()) >= {
        "postgres", "redis", "init", "dagster-code", "dagster-webserver", "dagster-daemon", "mlflow",
        "scorer", "prometheus", "alertmanager", "pushgateway", "grafana", "node-exporter",
        "redis-exporter", "postgres-exporter", "stream-worker",
    }  # fmt: skip


def test_compose_references_exist_in_the_repository() -> None:
    """Build contexts, Dockerfiles and their targets, mounted files, env files, and what the commands run."""
    problems = []
    targets, commands, stack = dockerfile_targets(), cli_commands(), compose()
    for name, service in stack["services"].items():
        build = service.get("build")
        if build:
            context = ROOT / build["context"]
            if not (context / build["dockerfile"]).is_file():
                problems.append(f"{name}: Dockerfile {build['dockerfile']}")
            if build.get("target") not in targets:
                problems.append(f"{name}: build target {build.get('target')}")
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                if not (ROOT / source).exists():
                    problems.append(f"{name}: mounted {source}")
            elif not source.startswith("/") and source not in stack.get("volumes", {}):
                problems.append(f"{name}: volume {source} not declared")
        for env_file in service.get("env_file", []):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            required = isinstance(env_file, str) or env_file.get("required", True)
            if required and not (ROOT / path).is_file():
                problems.append(f"{name}: env_file {path}")
        command = service.get("command") or []
        if command and (service.get("build") or {}).get("target") == "platform":  # the image's own tools
            if not (VENV_BIN / command[0]).exists():
                problems.append(f"{name}: {command[0]} is not a tool of the project environment")
            if command[0] == "rtml" and command[1] not in commands:
                problems.append(f"{name}: rtml {command[1]}")
            if command[0] == "python" and not (ROOT / command[1].removeprefix("/app/")).is_file():
                problems.append(f"{name}: {command[1]}")
    # what the Dockerfile copies from the build context
    for sources in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE):
        problems += [f"Dockerfile: COPY {s}" for s in sources.split() if not (ROOT / s).exists()]
    assert not problems, problems


def test_compose_publishes_only_the_uis_and_the_api_on_localhost_by_default() -> None:
    published = {}
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, dict), f"{name}: use the long port syntax"
            published[(name, port["target"])] = str(port["published"])
            assert port["host_ip"] == "127.0.0.1", f"{name}: published beyond localhost by default"
        assert "expose" not in service or not service["expose"]
    assert published == PUBLISHED


def test_compose_services_talk_on_an_internal_network() -> None:
    data = compose()
    assert data["networks"]["backend"]["internal"] is True
    for name, service in data["services"].items():
        networks = set(service.get("networks", []))
        assert "backend" in networks, f"{name} is not on the internal network"
        assert ("frontend" in networks) == bool(service.get("ports")), f"{name}: frontend only to publish"


def test_only_the_senders_of_alerts_and_notices_have_a_route_out() -> None:
    """Issue 19: Alertmanager and the Dagster processes were on the internal network only, so the webhook
    the README says to configure was unreachable."""
    data = compose()
    assert data["networks"]["egress"].get("internal") is not True
    on_egress = {name for name, service in services().items() if "egress" in service.get("networks", [])}
    assert on_egress == {"alertmanager", "dagster-code", "dagster-daemon"}
    assert not any(services()[name].get("ports") for name in on_egress)  # a way out, not in


def test_alertmanager_receiver_url_comes_from_the_env_file(tmp_path: Path) -> None:
    """The receiver's URL is a secret: rendered from .env by the alertmanager-config service, never
    committed, and valid for Alertmanager (amtool, when installed)."""
    script = ROOT / "docker" / "alertmanager_config.py"
    template = ROOT / "monitoring" / "alertmanager" / "alertmanager.yml"
    assert "ALERTMANAGER_WEBHOOK_URL" in env_example()
    assert "ALERTMANAGER_WEBHOOK_URL" in services()["alertmanager-config"]["environment"]
    assert "ALERTMANAGER_WEBHOOK_URL: ${ALERTMANAGER_WEBHOOK_URL:-}" in COMPOSE.read_text()
    secret = "https://hooks.example.com/services/T000/B000/XXXXSECRET"
    rendered = tmp_path / "out" / "alertmanager.yml"
    proc = run(
        [sys.executable, str(script), str(template), str(rendered)],
        env={**os.environ, "ALERTMANAGER_WEBHOOK_URL": secret},
    )
    assert proc.returncode == 0, output(proc)
    config = yaml.safe_load(rendered.read_text())
    urls = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert urls == [secret]
    assert config["route"] == yaml.safe_load(template.read_text())["route"]
    assert secret not in template.read_text()
    if shutil.which("amtool"):
        check = run(["amtool", "check-config", str(rendered)])
        assert check.returncode == 0, output(check)
    unset = run(
        [sys.executable, str(script), str(template), str(rendered)],
        env={**os.environ, "ALERTMANAGER_WEBHOOK_URL": ""},
    )
    assert unset.returncode == 0 and yaml.safe_load(rendered.read_text()) == yaml.safe_load(
        template.read_text()
    )
    bad = run(
        [sys.executable, str(script), str(template), str(rendered)],
        env={**os.environ, "ALERTMANAGER_WEBHOOK_URL": "hooks.example.com/no-scheme"},
    )
    assert bad.returncode != 0 and "not an http(s) URL" in bad.stderr


def test_every_service_has_limits_rotated_logs_and_an_exact_image() -> None:
    """Issue 19: memory and CPU limits, log rotation, images that cannot change under a deploy (ours are
    tagged with the commit)."""
    raw = yaml.safe_load(COMPOSE.read_text())["services"]  # before interpolation: ${...} is ours
    raw_anchor_image = yaml.safe_load(COMPOSE.read_text())["x-platform"]["image"]
    problems = []
    for name, service in services().items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        if not limits.get("memory") or not limits.get("cpus"):
            problems.append(f"{name}: no memory and CPU limits")
        logging = service.get("logging", {})
        if logging.get("driver") != "json-file" or not logging.get("options", {}).get("max-size"):
            problems.append(f"{name}: logs not rotated")
        image = str(raw[name].get("image") or raw_anchor_image)
        if "${" not in image and not re.search(r":v?\d+\.\d+", image):
            problems.append(f"{name}: image {image} is not pinned to an exact version")
    assert not problems, problems
    for data in (workflow("test"),):
        for job in data["jobs"].values():
            for container in job.get("services", {}).values():
                assert re.search(r":v?\d+\.\d+", container["image"]), container["image"]


def test_compose_stores_keep_their_data_and_never_evict_features() -> None:
    stack = services()
    assert stack["postgres"]["shm_size"]  # Docker's 64 MB /dev/shm fails PostgreSQL's parallel queries
    redis_command = " ".join(stack["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis_command and "--maxmemory " in redis_command
    assert "REDIS_MAXMEMORY" in env_example()
    # the Pushgateway's figures survive a restart (a failure pushed once keeps its alert firing)
    assert "--persistence.file=/pushgateway/metrics" in stack["pushgateway"]["command"]
    assert "pushgateway-data:/pushgateway" in stack["pushgateway"]["volumes"]


def test_compose_mounts_the_monitoring_files() -> None:
    stack = services()

    def mounts(name: str) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in stack[name]["volumes"] if v.startswith("./")}

    assert mounts("prometheus") == {
        "/etc/prometheus/prometheus.yml": "./monitoring/prometheus/prometheus.yml",
        "/etc/prometheus/rules": "./monitoring/prometheus/rules",
    }
    assert "--config.file=/etc/prometheus/prometheus.yml" in stack["prometheus"]["command"]
    # Alertmanager reads the rendered copy (the receiver's URL from .env); git's file is the template
    assert mounts("alertmanager-config") == {
        "/etc/alertmanager-template/alertmanager.yml": "./monitoring/alertmanager/alertmanager.yml"
    }
    assert "alertmanager-config:/etc/alertmanager:ro" in stack["alertmanager"]["volumes"]
    assert mounts("grafana") == {
        "/etc/grafana/provisioning": "./monitoring/grafana/provisioning",
        "/var/lib/grafana/dashboards": "./monitoring/grafana/dashboards",
    }
    # the hosts the monitoring configuration names are services of the stack, on the right ports
    prometheus = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    hosts = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    hosts += prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    alertmanager = yaml.safe_load((ROOT / "monitoring/alertmanager/alertmanager.yml").read_text())
    webhook = alertmanager["receivers"][0]["webhook_configs"][0]["url"]
    datasource = yaml.safe_load(
        (ROOT / "monitoring/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    hosts += [
        re.sub(r"^https?://([^/]+).*$", r"\1", url) for url in (webhook, datasource["datasources"][0]["url"])
    ]
    for host in hosts:
        name, port = host.split(":")
        if name != "localhost":
            assert name in stack, f"monitoring names {host}, which is no compose service"
            assert port in json.dumps(stack[name]), f"{name} does not serve port {port}"


def test_compose_secrets_come_from_the_env_file() -> None:
    example = env_example()
    for name, operator in compose_variables():
        if operator not in (":-", "-"):  # no default: .env must define it
            assert name in example, f"${{{name}}} is not in .env.example"
    text = COMPOSE.read_text()
    for name in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert f"${{{name}:?" in text, f"{name} must be required (${{{name}:?...}})"
        assert "LOCAL DEFAULT" in ENV_EXAMPLE.read_text().split(f"\n{name}=")[0].splitlines()[-1]
    assert not [key for key in example if key.startswith("RTML_")], "rtml reads .env too: no RTML_ names"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :].count("!.env") == 0, "the image build context must not hold .env"
    with pytest.raises(KeyError, match=r"POSTGRES_\w*PASSWORD"):
        interpolate(text, {})


def test_compose_services_connect_to_postgresql_as_their_own_roles() -> None:
    """Least privilege in the compose model: the superuser's password reaches only `init` (which creates the
    roles, rtml.stack.roles) and the exporter; every other service connects as its own role (the roles
    themselves: tests/test_postgres_roles.py)."""
    from sqlalchemy.engine import make_url

    from rtml.stack import roles

    distinct = {name: f"{name.lower()}-value" for name in env_example()}  # each secret its own value
    superuser = distinct["POSTGRES_PASSWORD"]
    model = yaml.safe_load(interpolate(COMPOSE.read_text(), distinct))["services"]
    users: dict[str, set[str]] = {}
    for name, service in model.items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), name
        urls = [v for k, v in environment.items() if k.endswith(("DATABASE_URL", "STORE_URI")) and v]
        users[name] = {make_url(url).username or "" for url in urls if url.startswith("postgresql")}
        if "DAGSTER_PG_USER" in environment:
            users[name].add(environment["DAGSTER_PG_USER"])
        if name not in ("init", "postgres", "postgres-exporter"):
            assert superuser not in str(environment), f"{name} holds the superuser's password"
    assert "postgres" in users["init"]
    for name in ("dagster-code", "dagster-daemon", "dagster-webserver"):
        assert users[name] == {roles.PLATFORM_ROLE, roles.DAGSTER_ROLE}, (name, users[name])
    assert users["mlflow"] == {roles.MLFLOW_ROLE}
    assert users["scorer"] == {roles.SCORER_ROLE}
    init = model["init"]["environment"]
    for setting in ("SCORER", "PLATFORM", "DAGSTER", "MLFLOW"):
        assert init[f"RTML_POSTGRES_{setting}_PASSWORD"], setting


def test_compose_healthchecks_and_ordered_start() -> None:
    stack = services()
    for name, service in stack.items():
        one_shot = service.get("restart") == "no"
        assert one_shot or service.get("healthcheck"), f"{name} has no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            wanted = (
                "service_completed_successfully"
                if stack[dependency].get("restart") == "no"
                else "service_healthy"
            )
            assert condition == {"condition": wanted}, f"{name} → {dependency}: {condition}"
    assert stack["dagster-webserver"]["depends_on"]["dagster-code"]["condition"] == "service_healthy"


def test_dagster_containers_use_postgres_storage_and_the_code_server() -> None:
    import importlib

    from rtml.defs.automation.runs import MonitoredRunLauncher
    from rtml.defs.dagster_internals import instance_config

    config = instance_config(str(ROOT / "docker"))  # validates docker/dagster.yaml
    assert "postgres_db" in config["storage"]["postgres"]
    # runs whose code server dies with them (a redeploy) are marked failed: the launcher answers run
    # monitoring's health check, as the local stack's does
    launcher = getattr(
        importlib.import_module(config["run_launcher"]["module"]), config["run_launcher"]["class"]
    )
    assert launcher is MonitoredRunLauncher
    assert config["run_monitoring"]["enabled"] and config["run_monitoring"]["max_resume_run_attempts"] == 0
    stack = services()
    assert stack["dagster-code"]["environment"]["DAGSTER_PG_DB"] == "dagster"  # not MLflow's database
    workspace = yaml.safe_load((ROOT / "docker" / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    assert server["host"] == "dagster-code"
    assert str(server["port"]) in stack["dagster-code"]["command"]


# --- docker/ scripts -----------------------------------------------------------------------------------
@pytest.fixture
def fake_host(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """Stand-ins: `ssh` runs the remote command line here; `docker` records its arguments."""
    bin_dir, host = tmp_path / "bin", tmp_path / "host"
    bin_dir.mkdir()
    host.mkdir()
    (host / ".env").write_text("POSTGRES_PASSWORD=x\n")
    (bin_dir / "ssh").write_text('#!/usr/bin/env bash\nexec bash -c "${@: -1}"\n')
    (bin_dir / "docker").write_text(  # DOCKER_FAIL=1: every docker command fails (a broken release)
        '#!/usr/bin/env bash\nprintf "%s\\x1f" "$@" >>"$DOCKER_LOG"; echo >>"$DOCKER_LOG"\n'
        "[[ -z ${DOCKER_FAIL:-} ]] || exit 1\n"
        # DOCKER_RUNNING=1: `compose ps` lists a container (a stack is up)
        'if [[ -n ${DOCKER_RUNNING:-} && " $* " == *" ps "* ]]; then echo 0123abcd; fi\n'
    )
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    log = tmp_path / "docker.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DEPLOY_HOST": "deploy.example",
        "DEPLOY_PATH": str(host),
        "IMAGE_PREFIX": "ghcr.io/owner",
        "DOCKER_LOG": str(log),
    }
    yield env, host, log


def deploy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run(["bash", str(DEPLOY_SCRIPT), *args], env=env)


def releases(host: Path) -> list[tuple[str, str]]:
    """(tag, outcome) of each line of the host's release record."""
    return [tuple(line.split()[:2]) for line in (host / "releases").read_text().splitlines()]  # type: ignore[misc]


def test_deploy_script_rolls_back_to_the_previous_release(
    fake_host: tuple[dict[str, str], Path, Path],
) -> None:
    env, host, log = fake_host
    assert deploy(env, "previous").returncode != 0  # nothing deployed yet
    for tag in ("aaa", "bbb", "ccc"):
        proc = deploy(env, "up", tag)
        assert proc.returncode == 0, output(proc)
    assert (host / "docker-compose.yaml").read_text() == COMPOSE.read_text()
    assert (host / "monitoring/alertmanager/alertmanager.yml").is_file()
    assert (host / ".env").read_text() == "POSTGRES_PASSWORD=x\n"  # the host's secrets are left alone
    assert releases(host)[-2:] == [("ccc", "attempted"), ("ccc", "ok")]
    assert deploy(env, "current").stdout.strip() == "ccc"
    assert deploy(env, "previous").stdout.strip() == "bbb"
    proc = deploy(env, "rollback")
    assert proc.returncode == 0, output(proc)
    assert releases(host)[-3:] == [("ccc", "rolled-back"), ("bbb", "attempted"), ("bbb", "ok")]
    assert "IMAGE_TAG=bbb\nPLATFORM_IMAGE=ghcr.io/owner/rtml-platform\n" in (host / "release.env").read_text()
    assert deploy(env, "rollback").returncode == 0  # a second rollback goes further back, not to ccc
    assert deploy(env, "current").stdout.strip() == "aaa"
    proc = deploy(env, "rollback")  # nothing good before the first release
    assert proc.returncode != 0 and "no good release other than the current one (aaa)" in proc.stderr
    assert deploy(env, "current").stdout.strip() == "aaa"
    proc = deploy(
        env, "run", "rtml", "rollback", "--approver", "github:someone", "--reason", "bad p99, it's v3"
    )
    assert proc.returncode == 0, output(proc)
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
    assert calls[-1][-7:] == [
        "dagster-code",
        "rtml",
        "rollback",
        "--approver",
        "github:someone",
        "--reason",
        "bad p99, it's v3",
    ]
    assert ["compose", "--env-file", ".env", "--env-file", "release.env", "pull", "--quiet"] in calls
    assert any("--wait" in call and "--no-build" in call for call in calls)


def test_deploy_script_rolls_back_over_a_failed_release_to_the_last_good_one(
    fake_host: tuple[dict[str, str], Path, Path],
) -> None:
    """Issue 19: the old record kept successful deploys only, so after a failed deploy the default
    rollback went to the release before the last good one."""
    env, host, _ = fake_host
    for tag in ("aaa", "bbb"):
        assert deploy(env, "up", tag).returncode == 0
    proc = deploy({**env, "DOCKER_FAIL": "1"}, "up", "ccc")
    assert proc.returncode != 0
    assert releases(host)[-2:] == [("ccc", "attempted"), ("ccc", "failed")]
    assert deploy(env, "current").stdout.strip() == "ccc"  # what the host half runs
    assert deploy(env, "previous").stdout.strip() == "bbb"
    assert deploy(env, "rollback").returncode == 0
    assert "IMAGE_TAG=bbb\n" in (host / "release.env").read_text()


def test_deploy_script_refuses_to_roll_back_onto_the_current_release(
    fake_host: tuple[dict[str, str], Path, Path],
) -> None:
    """Issue 19: the same commit deployed twice made "previous" the current release; the app rollback did
    nothing while the workflow went on to move the model's production alias back."""
    env, host, log = fake_host
    for tag in ("aaa", "bbb", "bbb"):
        assert deploy(env, "up", tag).returncode == 0
    assert deploy(env, "previous").stdout.strip() == "aaa"
    proc = deploy(env, "rollback", "bbb")
    assert proc.returncode != 0 and "bbb is the current release" in proc.stderr
    assert releases(host)[-1] == ("bbb", "ok")  # nothing recorded, nothing started
    only_aaa = deploy(env, "up", "aaa")
    assert only_aaa.returncode == 0
    assert deploy(env, "rollback").returncode == 0  # to bbb, the newest good one other than aaa
    assert deploy(env, "current").stdout.strip() == "bbb"
    assert deploy(env, "rollback").returncode != 0  # aaa was rolled back from: no good release is left
    # a host with the older record (one bare tag per line, successful deploys only) reads as all good
    (host / "releases").write_text("aaa\nbbb\n")
    assert deploy(env, "previous").stdout.strip() == "aaa"
    assert log.exists()


def test_deploy_script_refuses_a_host_without_env_file(fake_host: tuple[dict[str, str], Path, Path]) -> None:
    env, host, _ = fake_host
    (host / ".env").unlink()
    proc = deploy(env, "up", "aaa")
    assert proc.returncode != 0 and ".env is missing" in proc.stderr
    assert not (host / "releases").exists()  # refused before anything was attempted


def test_deploy_script_refuses_the_placeholder_secrets_of_the_env_example(
    fake_host: tuple[dict[str, str], Path, Path],
) -> None:
    env, host, log = fake_host
    placeholder = env_example()["REDIS_PASSWORD"]
    (host / ".env").write_text(f"POSTGRES_PASSWORD=s3cret-Value\nREDIS_PASSWORD={placeholder}\n")
    proc = deploy(env, "up", "aaa")
    assert proc.returncode != 0 and "placeholder of .env.example for: REDIS_PASSWORD -" in proc.stderr
    assert "s3cret" not in proc.stderr  # names only, never values
    assert not (host / "releases").exists() and not log.exists()  # nothing attempted, nothing pulled


def test_deploy_drains_runs_backs_up_and_migrates_before_the_new_containers(
    fake_host: tuple[dict[str, str], Path, Path],
) -> None:
    """Issue 19: each deploy recreated dagster-code and killed the runs executing in it; nothing backed up
    PostgreSQL or ran the migrations."""
    env, host, log = fake_host
    assert deploy({**env, "DOCKER_RUNNING": "1", "DEPLOY_DRAIN_SECONDS": "60"}, "up", "aaa").returncode == 0
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
    stop = next(i for i, c in enumerate(calls) if c[-2:] == ["stop", "dagster-daemon"])
    drain = ["dagster-code", "rtml", "runs", "wait", "--timeout", "60"]
    wait = next(i for i, c in enumerate(calls) if c[-6:] == drain)
    up = next(i for i, c in enumerate(calls) if "up" in c and "--remove-orphans" in c)
    assert stop < wait < up  # no new run from the queue, the running ones finish, then the new containers
    # before the new images start: a backup of PostgreSQL, then the migrations as their own step
    dump = next(i for i, c in enumerate(calls) if "pg_dumpall" in c)
    stores = next(i for i, c in enumerate(calls) if c[-2:] == ["postgres", "redis"] and "up" in c)
    init = next(i for i, c in enumerate(calls) if c[-1:] == ["init"] and "run" in c)
    dagster = next(i for i, c in enumerate(calls) if c[-3:] == ["dagster", "instance", "migrate"])
    mlflow = next(i for i, c in enumerate(calls) if "mlflow db upgrade" in " ".join(c))
    assert wait < dump < stores < init < dagster < mlflow < up
    (backup,) = (host / "backups").iterdir()
    assert re.fullmatch(r"\d{8}T\d{6}Z-before-aaa\.sql\.gz", backup.name)
    log.unlink()
    assert deploy(env, "up", "bbb").returncode == 0  # no stack running (a first deploy): nothing to drain
    assert not any("dagster-daemon" in line or "pg_dumpall" in line for line in log.read_text().splitlines())
    assert any("migrate" in line for line in log.read_text().splitlines())  # migrations always run


def test_rtml_runs_wait_returns_once_no_run_is_in_progress(tmp_path: Path) -> None:
    import dagster as dg
    from typer.testing import CliRunner

    from rtml.cli import app

    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {"DAGSTER_HOME": str(home)}
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        runner = CliRunner()
        assert runner.invoke(app, ["runs", "wait", "--timeout", "0"], env=env).exit_code == 0
        run = instance.add_run(dg.DagsterRun(job_name="hourly_ingestion", status=dg.DagsterRunStatus.STARTED))
        busy = runner.invoke(app, ["runs", "wait", "--timeout", "0.3", "--poll", "0.1"], env=env)
        assert busy.exit_code == 1 and "hourly_ingestion STARTED" in busy.output
        instance.report_run_failed(run)
        assert runner.invoke(app, ["runs", "wait", "--timeout", "0"], env=env).exit_code == 0


def test_each_release_ships_its_monitoring_configuration_and_applies_it(
    fake_host: tuple[dict[str, str], Path, Path],
) -> None:
    """Issue 19: Prometheus and Alertmanager mounted single files that tar replaced under them, nothing
    reloaded them, and files removed in git stayed on the host."""
    env, host, log = fake_host
    (host / "monitoring" / "prometheus").mkdir(parents=True)  # a host of the older layout: a real folder
    (host / "monitoring" / "prometheus" / "old.yml").write_text("stale")
    assert deploy(env, "up", "aaa").returncode == 0
    stale = host / "releases.d" / "aaa" / "monitoring" / "prometheus" / "rules" / "removed-in-git.yml"
    stale.write_text("groups: []\n")
    assert deploy(env, "up", "bbb").returncode == 0
    assert (host / "monitoring").is_symlink()
    assert (host / "monitoring").resolve() == (host / "releases.d" / "bbb" / "monitoring").resolve()
    folder = (host / "monitoring").resolve()
    shipped = {p.relative_to(folder) for p in folder.rglob("*")}
    in_git = {p.relative_to(ROOT / "monitoring") for p in (ROOT / "monitoring").rglob("*")}
    assert shipped == in_git  # nothing stale, nothing missing
    assert (host / "docker-compose.yaml").read_text() == COMPOSE.read_text()
    calls = [line.split("\x1f")[:-1] for line in log.read_text().splitlines()]
    up = max(i for i, c in enumerate(calls) if "--remove-orphans" in c)
    recreate = max(i for i, c in enumerate(calls) if "--force-recreate" in c)
    assert recreate > up
    assert {"alertmanager-config", "alertmanager", "prometheus", "grafana"} <= set(calls[recreate])
    for tag in ("ccc", "ddd", "eee"):
        assert deploy({**env, "DEPLOY_RELEASES_KEEP": "2"}, "up", tag).returncode == 0
    assert sorted(p.name for p in (host / "releases.d").iterdir()) == ["ddd", "eee"]


def test_release_tag_accepts_only_commits_of_main_and_release_tags(tmp_path: Path) -> None:
    """Issue 19: the deploy workflow's free-text tag input was checked out as given."""
    repo = tmp_path / "repo"

    def git(*args: str) -> str:
        proc = run(["git", "-C", str(repo), *args])
        assert proc.returncode == 0, output(proc)
        return proc.stdout.strip()

    repo.mkdir()
    git("init", "-q", "-b", "main")
    git("-c", "user.name=t", "-c", "user.email=t@example", "commit", "-q", "--allow-empty", "-m", "one")
    on_main = git("rev-parse", "HEAD")
    git("tag", "v1.2.0")
    git("checkout", "-q", "-b", "feature")
    git("-c", "user.name=t", "-c", "user.email=t@example", "commit", "-q", "--allow-empty", "-m", "two")
    off_main = git("rev-parse", "HEAD")
    git("tag", "v9")  # a release tag on a commit that is not on main

    def release_tag(tag: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MAIN_REF": "main"}
        return run(["bash", str(ROOT / "docker" / "release-tag.sh"), tag], env=env, cwd=repo)

    assert release_tag(on_main).stdout.strip() == on_main
    assert release_tag("v1.2.0").stdout.strip() == on_main
    for bad, message in [
        (off_main, "is not on main"),
        ("v9", "is not on main"),
        (on_main[:12], "neither a full commit SHA"),
        ("main", "neither a full commit SHA"),
        ("feature", "neither a full commit SHA"),
        ("v1.2.0; rm -rf /", "neither a full commit SHA"),
        ("--upload-pack=touch", "neither a full commit SHA"),
        ("0" * 40, "not a commit of this repository"),
        ("v3", "no release tag v3"),
        ("", "neither a full commit SHA"),
    ]:
        proc = release_tag(bad)
        assert proc.returncode != 0 and message in proc.stderr, (bad, output(proc))
    deploy_text = (WORKFLOWS / "deploy.yaml").read_text()
    assert deploy_text.count("docker/release-tag.sh") == 3  # staging, production, rollback
    for job in workflow("deploy")["jobs"].values():
        checkout = job["steps"][0]
        assert checkout["with"]["ref"] == "main" and "TAG" not in json.dumps(checkout)


def test_webhook_receiver_prints_each_notice() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    receiver = subprocess.Popen(
        [sys.executable, str(ROOT / "docker" / "webhook_log.py")],
        env={**os.environ, "WEBHOOK_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        body = json.dumps({"status": "firing", "alerts": [{"labels": {"alertname": "ScoringDegraded"}}]})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/alerts", body.encode(), {"Content-Type": "application/json"}
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    assert response.status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        receiver.terminate()
        try:
            printed, _ = receiver.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # SIGTERM blocked in this process tree: the line is printed anyway
            receiver.kill()
            printed, _ = receiver.communicate(timeout=10)
    (line,) = printed.splitlines()
    assert json.loads(line)["path"] == "/alerts"
    assert json.loads(line)["body"]["alerts"][0]["labels"]["alertname"] == "ScoringDegraded"
