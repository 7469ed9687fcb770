"""The deployment recipes in deploy/ run the Procfile's processes and give them time to drain.

No Docker, systemd or Kubernetes here: each recipe is parsed (systemd units with
configparser, the Dockerfile by its instructions, compose and Kubernetes with PyYAML) and
held to the Procfile's commands and to the grace relations: a process manager must wait
longer than FLOWKIT_DRAIN_GRACE (workers) or gunicorn's graceful_timeout (web) before it
kills, or a stop cuts the drain short.
"""

from __future__ import annotations

import ast
import configparser
import json
import os
import re
import shlex
import tomllib

import pytest

from flowkit import defaults
from flowkit.api import gunicorn_config
from tests.conftest import ROOT

yaml = pytest.importorskip("yaml")

DEPLOY = os.path.join(ROOT, "deploy")
#: Time a drained worker needs after its grace: hand over what still runs, exit.
HANDOVER = 10
WORKERS = ("worker", "worker_llm")


def procfile() -> dict[str, list[str]]:
    with open(os.path.join(ROOT, "Procfile")) as f:
        entries = (line.partition(":") for line in f if line.strip() and not line.startswith("#"))
        return {name.strip(): shlex.split(command) for name, _, command in entries}


def seconds(value: str | int) -> float:
    """A duration as systemd ("60", "60s", "1min") or compose ("60s", "1m30s") write it."""
    text = str(value).strip()
    if text.isdigit():
        return float(text)
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(float(n) * units[u] for n, u in parts)


def drain_grace(env: dict[str, str]) -> float:
    return float(env.get("FLOWKIT_DRAIN_GRACE", defaults.DRAIN_GRACE))


def needed_stop_time(process: str, env: dict[str, str], pre_stop: float = 0.0) -> float:
    """How long a stop must wait before it kills ``process`` (strictly more than this)."""
    if process in WORKERS:
        return pre_stop + drain_grace(env) + HANDOVER
    if process == "web":
        return pre_stop + gunicorn_config.graceful_timeout
    return 0.0


def test_the_procfile_has_the_processes_the_recipes_cover():
    assert set(procfile()) == {"web", "worker", "worker_llm", "beat"}


# -- systemd ---------------------------------------------------------------------------------


def unit(process: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd's keys are case-sensitive
    path = os.path.join(DEPLOY, "systemd", f"flowkit-{process.replace('_', '-')}.service")
    assert parser.read(path), f"no systemd unit {path}"
    return parser


@pytest.mark.parametrize("process", ["web", "worker", "worker_llm", "beat"])
def test_a_systemd_unit_runs_the_procfile_command_and_waits_out_the_drain(process):
    service = unit(process)["Service"]
    command = shlex.split(service["ExecStart"].replace("%%", "%"))  # %% is systemd's escape
    expected = procfile()[process]
    assert os.path.basename(command[0]) == expected[0] and command[1:] == expected[1:]
    env = dict(e.split("=", 1) for e in shlex.split(service.get("Environment", "")))
    # SIGTERM to the main process only, SIGKILL to what is left after TimeoutStopSec
    assert service["KillMode"] == "mixed" and service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert seconds(service["TimeoutStopSec"]) > needed_stop_time(process, env)
    assert service["Restart"] == "always"
    if process.startswith("worker"):  # each its own: on one host the second found it taken
        assert env["FLOWKIT_METRICS_PORT"] == {"worker": "9808", "worker_llm": "9809"}[process]


# -- Docker ----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    with open(os.path.join(DEPLOY, "Dockerfile")) as f:
        lines = [line.rstrip("\n") for line in f if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(w.upper(), rest.strip()) for w, _, rest in
            (line.strip().partition(" ") for line in joined.splitlines() if line.strip())]


def test_the_dockerfile_uses_a_python_the_readme_recommends():
    """3.12 or later: 3.11 has the AST bug of the README's Deploying section (cpython#106905)."""
    [base] = [args for instruction, args in dockerfile() if instruction == "FROM"]
    version = re.fullmatch(r"python:(\d+)\.(\d+)-slim", base)
    assert version and (int(version[1]), int(version[2])) >= (3, 12), base


def test_the_dockerfile_starts_the_web_process_as_pid_1_and_holds_every_process_code():
    instructions = dockerfile()
    [cmd] = [args for op, args in instructions if op == "CMD"]
    # exec form: no shell as PID 1, which would not pass SIGTERM on
    assert json.loads(cmd) == procfile()["web"]
    assert not [args for op, args in instructions if op == "ENTRYPOINT"]
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    copied = {source.rstrip("/") for op, args in instructions if op == "COPY"
              for source in args.split()[:-1]}  # every source: the last word is the target
    assert {"flowkit", "pyproject.toml"} <= copied
    assert needed_modules() <= copied, needed_modules() - copied
    # the modules `pip install .` packs beside the package: the `flowkit` command starts
    # at _flowkit_cli, and an image without it failed every `flowkit ...` in its containers
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as project:
        modules = tomllib.load(project)["tool"]["setuptools"]["py-modules"]
    assert {f"{m}.py" for m in modules} <= copied, {f"{m}.py" for m in modules} - copied


def needed_modules() -> set[str]:
    """The top-level packages the Procfile's commands import: the -A apps, the WSGI app,
    the gunicorn config, and the modules those Celery apps import (``imports=[...]``, or
    by default from ``FLOWKIT_WORKFLOW_MODULES``)."""
    found: set[str] = set()
    apps = []
    for argv in procfile().values():
        for flag, value in zip(argv, argv[1:], strict=False):
            if flag in ("-A", "-c"):
                found.add(re.split(r"[./:]", value)[0])
            if flag == "-A":
                apps.append(value)
        wsgi = [a for a in argv if re.fullmatch(r"\w+(\.\w+)*:\w+", a)]
        found.update(a.split(".")[0].split(":")[0] for a in wsgi)
    for app in apps:
        with open(os.path.join(ROOT, *app.split(".")) + ".py") as f:
            for node in ast.walk(ast.parse(f.read())):
                if (isinstance(node, ast.keyword) and node.arg == "imports"
                        and isinstance(node.value, ast.List)):
                    found.update(ast.literal_eval(node.value))
                if (isinstance(node, ast.Call) and len(node.args) == 2
                        and isinstance(node.args[0], ast.Constant)
                        and node.args[0].value == "FLOWKIT_WORKFLOW_MODULES"):
                    found.update(m.strip() for m in ast.literal_eval(node.args[1]).split(","))
    return found


def test_compose_runs_every_procfile_process_from_the_image_and_outwaits_the_drain():
    with open(os.path.join(DEPLOY, "compose.yaml")) as f:
        services = yaml.safe_load(f)["services"]
    for process, command in procfile().items():
        service = services[process]
        assert service["command"] == command
        assert service["build"]["dockerfile"] == "deploy/Dockerfile" and service["init"] is True
        env = {k: str(v) for k, v in service["environment"].items()}
        # compose's default stop_grace_period is 10 s: too short for a drain
        assert seconds(service["stop_grace_period"]) > needed_stop_time(process, env), process
    redis = services["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes"  # the README's advice: AOF on


def test_the_reference_web_process_says_when_no_one_can_call_its_api(
        flowkit_env, monkeypatch, caplog):
    from api.app import create_app
    from flowkit import config

    monkeypatch.setenv("FLOWKIT_WORKFLOW_MODULES", "tests.workflows")
    for keys, said in (("", True), ("a-key", False)):
        monkeypatch.setattr(config, "_settings",
                            config.get_settings().replace(api_keys=keys, api_open=False))
        caplog.clear()
        create_app()
        assert ("every API call that needs a key, /metrics too, answers 401" in caplog.text) \
            is said, keys
        assert ("run tokens still read their runs where FLOWKIT_API_SECRET or SECRET_KEY is "
                "set; /healthz answers" in caplog.text) is said


def test_the_reference_worker_runs_the_workflows_the_web_process_serves(start_worker):
    """FLOWKIT_WORKFLOW_MODULES reached the web process alone: the Procfile's worker imported
    ``examples``, dropped the steps of a workflow from another module ("unregistered task"),
    and the run failed as WorkflowNotFound. Its step's queue is one only this worker consumes."""
    from tests import workflows as wf

    start_worker("reference", app="workers.celery_app", queues=("flowkit", wf.LONELY),
                 env_overrides={"FLOWKIT_WORKFLOW_MODULES": "examples, tests.workflows"})
    assert wf.lonely.start({"n": 1}).result(30) == {"n": 2}


@pytest.mark.parametrize("recipe", ["compose", "kubernetes", "systemd"])
def test_each_recipe_has_a_place_for_the_api_s_credentials(recipe):
    """None had: the web process it deployed answered every API call, and /metrics, with a
    401, and run tokens were signed with a secret of each process alone."""
    needed = {"FLOWKIT_API_KEYS", "FLOWKIT_API_SECRET", "OPENAI_API_KEY"}
    if recipe == "compose":
        with open(os.path.join(DEPLOY, "compose.yaml")) as f:
            env = yaml.safe_load(f)["services"]["web"]["environment"]
        # compose refuses to start without them, saying which (`${NAME:?why}`)
        assert all(re.fullmatch(rf"\$\{{{name}:\?.+\}}", env[name]) for name in needed), env
    elif recipe == "kubernetes":
        with open(os.path.join(DEPLOY, "kubernetes", "flowkit.yaml")) as f:
            text = f.read()
        assert all(f"--from-literal={name}=" in text for name in needed)  # how to make it
        for doc in (d for d in manifests() if d["kind"] == "Deployment"):
            [container] = doc["spec"]["template"]["spec"]["containers"]
            assert {"secretRef": {"name": "flowkit-secrets"}} in container["envFrom"]
    else:
        with open(os.path.join(DEPLOY, "systemd", "env.example")) as f:
            names = {line.partition("=")[0] for line in f if "=" in line and line[0] != "#"}
        assert needed <= names


# -- Kubernetes ------------------------------------------------------------------------------


def manifests() -> list[dict]:
    with open(os.path.join(DEPLOY, "kubernetes", "flowkit.yaml")) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pre_stop_seconds(container: dict) -> float:
    hook = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    if not hook:
        return 0.0
    assert hook[0] == "sleep", hook
    return float(hook[1])


def test_kubernetes_runs_every_procfile_process_and_its_grace_outlasts_the_drain():
    docs = manifests()
    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    env = config["data"]
    deployments = {d["metadata"]["labels"]["process"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == set(procfile())
    for process, command in procfile().items():
        pod = deployments[process]["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["command"] == command
        assert {"configMapRef": {"name": config["metadata"]["name"]}} in container["envFrom"]
        needed = needed_stop_time(process, env, pre_stop_seconds(container))
        assert pod["terminationGracePeriodSeconds"] > needed, process
    beat = deployments["beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    web = deployments["web"]["spec"]["template"]["spec"]["containers"][0]
    assert pre_stop_seconds(web) > 0, "web stops taking connections before its SIGTERM"
