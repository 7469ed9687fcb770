"""``flowkit dev`` on a project of the test's own (tests/fixtures/devproject, copied): it
comes up, ``flowkit run --follow`` runs a workflow through it (a step on the default
queue, one on ``llm`` calling the local LLM server), an edit of a component reloads the
worker and the next run uses the new code, a run in flight across a reload finishes on
the new code, and SIGTERM leaves no process behind; ``--web`` serves the user's own
Flask app, on their Redis when FLOWKIT_REDIS_URL is set, on a free port when the one asked
for is taken, and Ctrl-C stops everything too.

Real processes throughout: ``python -m flowkit.cli dev`` in its own session starts its
own redis-server, LLM server, worker, beat and gunicorn; the test reads its process tree
from /proc before signalling it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from flowkit.testing import free_port
from tests.conftest import ROOT, wait_until
from tests.test_demo_signals import Demo, _alive, _kill_leftovers, _tree, _wait_gone

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)"),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]

FIXTURE = Path(ROOT) / "tests" / "fixtures" / "devproject"


def _user_env() -> dict[str, str]:
    """A user's shell: flowkit installed, none of the test deployment's settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("FLOWKIT_") and k not in ("OPENAI_API_KEY", "PYTHONPATH")}


class Dev(Demo):
    """``python -m flowkit.cli dev ...`` run from ``project``, in its own session."""

    def __init__(self, project: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "flowkit.cli", "dev", *args], cwd=project,
            env={**_user_env(), **(env or {})}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def wait_for_all(self, texts: list[str], timeout: float) -> None:
        """Wait until a line containing each of ``texts`` came, in any order."""
        deadline = time.monotonic() + timeout
        for text in texts:
            if not any(text in line for line in self.lines):
                self.wait_for(text, max(0.0, deadline - time.monotonic()))

    def exports(self) -> dict[str, str]:
        """The ``export NAME=value`` lines it printed for the CLI of another terminal."""
        return dict(m.groups() for line in self.lines
                    if (m := re.match(r"\s+export (\w+)=(\S+)$", line)))


def flowkit_run(project: Path, exports: dict[str, str], name: str) -> dict:
    """``flowkit run greet -i name=... --follow --json`` as a user runs it after the
    exports; returns the last event (the run's end), after checking the exit code is 0."""
    result = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "run", "greet", "-i", f"name={name}",
         "--follow", "--json"],
        cwd=project, env={**_user_env(), **exports}, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["type"] == "run.succeeded", result.stdout
    return events[-1]


@pytest.mark.timeout(240)
@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_dev_serves_the_project_reloads_on_edit_and_stops_everything(tmp_path):
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    port = free_port()
    dev = Dev(project, "-A", "shop.flows", "--port", str(port))
    procs: dict[int, tuple[str, str]] = {}
    try:
        dev.wait_for("Ctrl-C stops everything", timeout=120)
        out = dev.output()
        assert "flowkit dev: shop.flows is up" in out
        assert re.search(r"queues\s+flowkit, llm \(one worker consumes them all\)", out), out
        assert "consuming queues flowkit, llm (workflows: gate, greet)" in out  # the worker said so
        exports = dev.exports()
        assert exports["FLOWKIT_APP"] == "shop.flows"
        assert re.fullmatch(r"redis://127\.0\.0\.1:\d+/0", exports["FLOWKIT_REDIS_URL"])
        assert exports["FLOWKIT_URL"].startswith("http://127.0.0.1:")
        assert re.search(rf"dashboard\s+{re.escape(exports['FLOWKIT_URL'])}/ui ", out), out
        # named by its port: two flowkit devs on one Redis were one worker, "dev@host"
        listed = subprocess.run([sys.executable, "-m", "flowkit.cli", "workers", "--json"],
                                cwd=project, env={**_user_env(), **exports},
                                capture_output=True, text=True, timeout=60)
        assert [w["name"].partition("@")[0] for w in json.loads(listed.stdout)["workers"]] == [
            f"dev-{port}"], listed.stdout + listed.stderr
        # the web app's front page sends a person to the dashboard
        with urllib.request.urlopen(exports["FLOWKIT_URL"] + "/", timeout=10) as page:
            assert page.url == exports["FLOWKIT_URL"] + "/ui"
            assert page.headers.get_content_type() == "text/html"

        first = flowkit_run(project, exports, "Ada")
        assert first["output"]["greeting"] == "hello Ada"
        assert first["output"]["version"] == "v1"
        assert first["output"]["llm_words"] > 0  # the local LLM server answered the llm queue

        procs = _tree(dev.proc.pid)
        commands = " | ".join(cmd for _, cmd in procs.values())
        for expected in ("redis-server", "flowkit.testing.fake_openai", "flowkit.cli.devworker",
                         "devworker -A shop.flows --beat", "gunicorn"):
            assert expected in commands, f"{expected!r} not among its processes: {commands}"
        worker_before = {pid for pid, (_, cmd) in procs.items()
                         if "flowkit.cli.devworker" in cmd and "--beat" not in cmd}
        beat_before = {pid for pid, (_, cmd) in procs.items() if "--beat" in cmd}

        components = project / "shop" / "components.py"
        components.write_text(components.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
        dev.wait_for("reload: shop/components.py changed; restarting worker, web and beat",
                     timeout=30)
        dev.wait_for_all(["worker reloaded", "web reloaded"], timeout=90)
        assert not _alive({pid: procs[pid] for pid in worker_before}), "the old worker still runs"
        # beat too, which stores the schedules the code declares as it starts
        assert not _alive({pid: procs[pid] for pid in beat_before}), "the old beat still runs"
        assert any("--beat" in cmd for _, cmd in _tree(dev.proc.pid).values()), "no beat runs"
        # Celery's banner (45 lines) at the start only: at every reload it hid the reload's lines
        assert sum("[tasks]" in line for line in dev.lines) == 1, dev.output()

        second = flowkit_run(project, exports, "Grace")
        assert second["output"]["greeting"] == "hello Grace"
        assert second["output"]["version"] == "v2"  # the edited component ran

        # a save that breaks the code stops worker, web and beat; each starts again once a
        # fix is saved (beat said "restart flowkit dev to get it back", and came back)
        good = components.read_text()
        components.write_text(good + "\nraise RuntimeError('broken on purpose')\n")
        line = dev.wait_for("beat exited with code", timeout=60)
        assert line.endswith("it starts again when a Python file changes"), line
        mark = len(dev.lines)
        components.write_text(good)
        for name in ("worker", "web"):
            if not any(f"{name} reloaded" in seen for seen in dev.lines[mark:]):
                dev.wait_for(f"{name} reloaded", timeout=90)

        in_flight_across_a_reload(project, exports, dev)

        procs |= _tree(dev.proc.pid)  # the new worker and web processes too
        dev.proc.send_signal(signal.SIGTERM)
        assert_stopped_everything(dev, procs, signal.SIGTERM)
        for name in ("redis ", "llm   ", "worker", "beat  ", "web   "):  # one log, no colour
            assert any(line.startswith(f"{name} | ") for line in dev.lines), name  # on a pipe
        assert not any("\033[" in line for line in dev.lines)
    finally:
        _kill_leftovers(dev, procs)


def in_flight_across_a_reload(project: Path, exports: dict[str, str], dev: Dev) -> None:
    """A run whose step is running when the code changes: the reload hands it over (the
    dev worker drains for 3 s), the new worker runs that step again on the new code, the
    checkpointed step before it is not run again, and ``flowkit run --follow`` (over the
    restarted web app) sees it through to its success."""
    gate = project / "gate-open"
    follower = subprocess.Popen(
        [sys.executable, "-m", "flowkit.cli", "run", "gate", "-i", "name=Mo", "-i",
         f"gate={gate}", "--follow", "--json"],
        cwd=project, env={**_user_env(), **exports}, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert follower.stdout is not None
        events = []
        for line in follower.stdout:  # until the gated step runs
            events.append(json.loads(line))
            if events[-1]["type"] == "step.started" and events[-1]["step"] == "1:shop.gated":
                break
        components = project / "shop" / "components.py"
        components.write_text(components.read_text().replace('VERSION = "v2"', 'VERSION = "v3"'))
        dev.wait_for("reload: shop/components.py changed", timeout=30)
        dev.wait_for("worker reloaded", timeout=90)
        gate.touch()
        events += [json.loads(line) for line in follower.stdout]
        assert follower.wait(60) == 0, events
    finally:
        follower.kill()
    types = [e["type"] for e in events]
    assert "run.restarted" in types, types
    assert events[-1]["type"] == "run.succeeded", events
    assert events[-1]["output"]["version"] == "v2"  # checkpointed before the reload
    assert events[-1]["output"]["gated_by"] == "v3"  # run again on the new code
    assert types.count("step.completed") == 2, types  # each step completed once


def assert_stopped_everything(dev: Dev, procs: dict[int, tuple[str, str]], signum: int) -> None:
    """After ``signum``: it exits with 128 + signum, saying so, and none of ``procs`` (its
    process tree as read before) is left."""
    code = dev.proc.wait(45)
    survivors = _wait_gone(procs, timeout=10)
    assert not survivors, f"still running after flowkit dev exited: {survivors}"
    dev.rest(10)
    out = dev.output()
    assert code == 128 + signum, out
    assert f"{signal.Signals(signum).name} received; stopping everything" in out
    assert out.rstrip().endswith("stopped")


@pytest.mark.timeout(180)
@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_dev_serves_the_users_flask_app_on_their_redis_on_a_free_port_stops_on_ctrl_c(
        tmp_path, redis_server):
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    taken = socket.create_server(("127.0.0.1", 0))  # the port asked for is in use
    taken_port = taken.getsockname()[1]
    # a database no other test uses; a password (the default user takes any) kept out of
    # the status line, which printed it in clear
    theirs = f"redis://default:s3cret@127.0.0.1:{redis_server.port}/5"
    # -A names the module of their Flask app (whose `app` is Flask's, not Celery's): the
    # worker and beat both find the flowkit Celery app its import made
    dev = Dev(project, "-A", "shop.web", "--web", "shop.web:app", "--port", str(taken_port),
              "--no-reload", env={"FLOWKIT_REDIS_URL": theirs})
    procs: dict[int, tuple[str, str]] = {}
    try:
        dev.wait_for("Ctrl-C stops everything", timeout=120)
        exports = dev.exports()
        assert exports["FLOWKIT_REDIS_URL"] == theirs
        assert f"redis at redis://***@127.0.0.1:{redis_server.port}/5 (FLOWKIT_REDIS_URL)" in (
            dev.output())
        assert "s3cret" not in dev.output().replace(f"FLOWKIT_REDIS_URL={theirs}", "")
        note = re.search(rf"port {taken_port} is taken; the web app listens on (\d+)", dev.output())
        assert note, dev.output()
        port = int(note.group(1))
        # the API is where the app mounted it (FlowKit(app, url_prefix="/flowkit"))
        assert exports["FLOWKIT_URL"] == f"http://127.0.0.1:{port}/flowkit"
        assert "(workflows: gate, greet)" in dev.output()  # as the web app's API lists them
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.read() == b"the shop"  # the user's own view, on the same server
        assert flowkit_run(project, exports, "Lin")["output"]["greeting"] == "hello Lin"
        swept = redis.Redis.from_url(theirs)
        wait_until(lambda: swept.exists("flowkit:reaper:swept"), 60, "beat's first sweep")
        assert "beat exited" not in dev.output(), dev.output()

        procs = _tree(dev.proc.pid)
        assert any("shop.web:app" in cmd for _, cmd in procs.values()), procs
        assert not any("redis-server" in cmd for _, cmd in procs.values()), "no private Redis"
        os.killpg(dev.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the foreground group
        assert_stopped_everything(dev, procs, signal.SIGINT)
        # its worker left their Redis with it: a run started there after dev stopped said
        # "flowkit dev's worker is down ...; it starts again when you save a fix"
        node = f"dev-{port}@{socket.gethostname()}"
        assert not swept.hexists("flowkit:nodes", node)
        assert not [w for w in swept.zrange("flowkit:workers", 0, -1)
                    if w.decode().startswith(f"{node}:")]
    finally:
        taken.close()
        _kill_leftovers(dev, procs)


def _break(module: Path) -> str:
    """Make ``module`` a SyntaxError; returns its source, to mend it with."""
    source = module.read_text()
    module.write_text(source + "\ndef broken(:\n")
    return source


def test_dev_on_a_redis_url_that_does_not_answer_says_so_at_once_and_starts_nothing(tmp_path):
    """A FLOWKIT_REDIS_URL left over from another session, its Redis gone: dev started the
    worker and web app, which retried Redis for 90 s, then said "not ready"."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "dev", "-A", "shop.flows", "--no-reload"],
        cwd=project, env={**_user_env(), "FLOWKIT_REDIS_URL": nobody}, capture_output=True,
        text=True, timeout=75)  # under load a start takes seconds; the old one, 90 s and more
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"flowkit dev: cannot reach Redis at {nobody} (FLOWKIT_REDIS_URL): "
        "start it, or unset FLOWKIT_REDIS_URL for a private Redis that flowkit dev starts "
        "and stops."], result.stderr
    assert "starting worker" not in result.stdout, result.stdout


@pytest.mark.timeout(180)
@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_dev_started_on_broken_code_waits_for_the_fix_then_serves_it(tmp_path):
    """It exited on a SyntaxError at start: started again by hand after each fix, where a
    reload (code broken later) waits for the next edit."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    components = project / "shop" / "components.py"
    source = _break(components)
    dev = Dev(project, "-A", "shop.flows", "--port", str(free_port()))
    procs: dict[int, tuple[str, str]] = {}
    try:
        dev.wait_for("flowkit dev: waiting for a change to a Python file under", timeout=60)
        assert "flowkit dev: importing 'shop.flows' raised SyntaxError" in dev.output()
        assert "components.py:" in dev.output(), dev.output()  # where, to fix it
        assert dev.proc.poll() is None, dev.output()
        components.write_text(source)
        dev.wait_for("flowkit dev: shop/components.py changed; starting again", timeout=30)
        dev.wait_for("Ctrl-C stops everything", timeout=120)
        assert "Traceback" not in dev.output(), dev.output()
        assert flowkit_run(project, dev.exports(), "Ada")["output"]["greeting"] == "hello Ada"
        procs = _tree(dev.proc.pid)
        dev.proc.send_signal(signal.SIGTERM)
        assert_stopped_everything(dev, procs, signal.SIGTERM)
    finally:
        _kill_leftovers(dev, procs)


def test_ctrl_c_while_dev_waits_for_a_fix_stops_it_without_a_traceback(tmp_path):
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    _break(project / "shop" / "components.py")
    dev = Dev(project, "-A", "shop.flows", "--port", str(free_port()))
    try:
        dev.wait_for("flowkit dev: waiting for a change to a Python file under", timeout=60)
        os.killpg(dev.proc.pid, signal.SIGINT)
        assert dev.proc.wait(30) == 130
        dev.rest(10)
        assert "Traceback" not in dev.output(), dev.output()
    finally:
        _kill_leftovers(dev, {})


def test_dev_without_reload_started_on_broken_code_exits_saying_why(tmp_path):
    """``--no-reload`` has no edit to wait for: it says what is broken, in one line."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    _break(project / "shop" / "components.py")
    result = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "dev", "-A", "shop.flows", "--no-reload"],
        cwd=project, env=_user_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "importing 'shop.flows' raised SyntaxError" in result.stderr


def test_dev_with_a_module_that_does_not_import_says_so_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "dev", "-A", "nosuch.flows"], cwd=tmp_path,
        env=_user_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "cannot import 'nosuch.flows'" in result.stderr


@pytest.mark.parametrize("web, says", [
    ("shop.webb:app", "--web shop.webb:app: no module 'shop.webb' here; give the module"),
    (":app", "--web :app: no module before the ':'; give the module of your Flask app"),
    ("shop.web:nope", "--web shop.web:nope: module 'shop.web' has no 'nope' (a factory: "
                      "--web 'shop.web:create_app()')."),
    ("shop.web:create_ap()", "--web shop.web:create_ap(): module 'shop.web' has no "
                             "'create_ap' (a factory: --web 'shop.web:create_app()')."),
])
def test_a_typo_in_web_is_a_usage_error_not_code_to_wait_for(tmp_path, web, says):
    """A --web module or attribute that does not exist (a command-line typo) made dev wait
    for a file change, which cannot fix it, saying "importing failed; fix it" (or "call
    FlowKit(app) in it" of an app that does)."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    result = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "dev", "-A", "shop.flows", "--web", web],
        cwd=project, env=_user_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr  # at once: it waited for an edit
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert says in result.stderr, result.stderr


def test_a_typo_in_the_app_s_variable_is_a_usage_error_not_code_to_wait_for(tmp_path):
    """-A module:variable naming a variable the module lacks: both fixes are on the command
    line, yet dev waited for a file change."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    result = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "dev", "-A", "shop.flows:nope"],
        cwd=project, env=_user_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "flowkit dev: -A shop.flows:nope: module 'shop.flows' has no 'nope'; name the Celery "
        "app's variable, or pass -A shop.flows alone."], result.stderr


@pytest.mark.parametrize("web, says", [
    ("shop.web:create_app()", "/api/flows"),
    ("shop.web:create_app('/v2')", "/v2"),
    ("shop.web:app", "/flowkit"),
])
def test_the_api_s_prefix_is_read_from_the_app_an_app_factory_included(tmp_path, web, says):
    """With a factory the banner named the default prefix: its FLOWKIT_URL met a 404."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    result = subprocess.run(
        [sys.executable, "-c", f"from flowkit.cli.dev import _web_api; print(_web_api({web!r}))"],
        cwd=project, env=_user_env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == repr((says, False))


def test_a_port_whose_last_connection_lingers_in_time_wait_is_free_one_listened_on_is_not():
    """A restart right after Ctrl-C moved the web app to a random port: the check bound
    without SO_REUSEADDR, which gunicorn sets, so TIME_WAIT read as taken."""
    from flowkit.cli.dev import _port_free  # noqa: PLC0415

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its address lingers in TIME_WAIT
    client.close()
    server.close()
    assert _port_free("127.0.0.1", port)
    with socket.create_server(("127.0.0.1", port)):
        assert not _port_free("127.0.0.1", port)


def test_an_empty_host_means_every_interface_as_for_bind():
    """``--host ""`` listened on every interface until the address check refused it."""
    from flowkit.cli.dev import _bind

    port = _bind("", 0)
    assert 0 < port < 65536


@pytest.mark.parametrize("source, says", [
    ("def broken(:\n", "raised SyntaxError: invalid syntax (at brokenweb.py:1)"),
    ("import nosuchmodule\n", "raised ModuleNotFoundError: No module named 'nosuchmodule'"),
])
def test_a_users_web_app_that_does_not_import_is_said_in_one_line(tmp_path, source, says):
    """``flowkit dev --web myapp:app`` handed the target to gunicorn, which printed a
    40-line traceback at each reload that broke it; flowkit's own web app said one line."""
    (tmp_path / "brokenweb.py").write_text(source)
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:flowkit.api.gunicorn_config",
         "--bind", f"127.0.0.1:{free_port()}", "flowkit.api.devapp:user_app('brokenweb:app')"],
        cwd=tmp_path, env=_user_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"flowkit dev web: importing 'brokenweb:app' {says}" in result.stderr, result.stderr


@pytest.mark.parametrize("web, started, says", [
    ("shop.web:create_app()", "/flowkit",
     "--web shop.web:create_app() mounts flowkit at '/api/flows' now, not '/flowkit' as when "
     "flowkit dev started (the URL it printed): put the prefix back, or restart flowkit dev "
     "to serve it there."),
    ("plainweb:app", "/flowkit",
     "--web plainweb:app: no Flask app with flowkit mounted there now; call FlowKit(app) in "
     "it again."),
])
def test_a_reload_that_unmounted_or_moved_the_api_is_said_not_served(tmp_path, web, started,
                                                                     says):
    """After an edit that dropped FlowKit(app), or changed its prefix, dev said "web
    reloaded" while the URL its banner printed (FLOWKIT_URL) answered 404."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    (project / "plainweb.py").write_text("from flask import Flask\n\napp = Flask(__name__)\n")
    env = {**_user_env(), "FLOWKIT_DEV_API_PREFIX": started}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:flowkit.api.gunicorn_config",
         "--bind", f"127.0.0.1:{free_port()}", f"flowkit.api.devapp:user_app({web!r})"],
        cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"flowkit dev web: {says}" in result.stderr, result.stderr


def test_a_reload_waits_out_the_workers_drain_then_its_hand_over(monkeypatch):
    """A drain set longer than dev's 3 s (the deploy recipes' 30 s, exported in the shell)
    was cut at 8 s: the step in flight was not handed over, and a few saves during one step
    failed its run as a crash."""
    from flowkit import config  # noqa: PLC0415
    from flowkit.cli import dev  # noqa: PLC0415

    monkeypatch.setattr(config, "_settings", config.get_settings().replace(drain_grace=30))
    assert dev._grace(dev.RELOAD_GRACE) == 30 + dev.RELOAD_GRACE
    assert dev._grace(dev.STOP_GRACE) == 30 + dev.STOP_GRACE
    monkeypatch.setattr(config, "_settings", config.get_settings().replace(drain_grace=3))
    assert dev._grace(dev.RELOAD_GRACE) == 8.0  # as it was with dev's own drain


def test_the_reload_watcher_skips_the_project_s_virtualenvs_whatever_their_name(tmp_path):
    """watchfiles skips .venv alone: a pip install into venv/ restarted the worker and web."""
    from watchfiles import PythonFilter  # noqa: PLC0415

    from flowkit.cli.dev import virtualenvs  # noqa: PLC0415

    for name in ("venv", "env", "myapp"):
        (tmp_path / name).mkdir()
    (tmp_path / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert virtualenvs(tmp_path) == [tmp_path / "env", tmp_path / "venv"]
    only_code = PythonFilter(ignore_paths=virtualenvs(tmp_path))
    from watchfiles import Change  # noqa: PLC0415

    installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "pkg" / "mod.py"
    assert not only_code(Change.added, str(installed))
    assert only_code(Change.modified, str(tmp_path / "myapp" / "flows.py"))


@pytest.mark.timeout(180)
@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_dev_killed_with_sigkill_leaves_no_process_behind(tmp_path):
    """An IDE's stop button, the OOM killer, kill -9: no handler of flowkit dev runs, and
    each child, in a session of its own, was orphaned (Redis, the LLM server, the worker,
    beat and the web app, its port still answering)."""
    project = tmp_path / "devproject"
    shutil.copytree(FIXTURE, project)
    dev = Dev(project, "-A", "shop.flows", "--port", str(free_port()), "--no-reload")
    procs: dict[int, tuple[str, str]] = {}
    try:
        dev.wait_for("Ctrl-C stops everything", timeout=120)
        procs = _tree(dev.proc.pid)
        commands = " | ".join(cmd for _, cmd in procs.values())
        for expected in ("redis-server", "flowkit.testing.fake_openai", "flowkit.cli.devworker",
                         "--beat", "gunicorn"):
            assert expected in commands, f"{expected!r} not among its processes: {commands}"
        dev.proc.kill()
        dev.proc.wait(10)
        survivors = _wait_gone(procs, timeout=60)
        assert not survivors, f"still running after flowkit dev was killed: {survivors}"
    finally:
        _kill_leftovers(dev, procs)


def test_dev_on_a_module_that_makes_no_flowkit_app_says_so_and_waits_for_the_fix(tmp_path):
    """It started Redis, the worker, beat and the web app, then gave up (exit 1) when the
    worker said the module makes no flowkit Celery app: a code fix, as a SyntaxError is."""
    (tmp_path / "plainflows.py").write_text(
        "import flowkit\n\n\n@flowkit.component\ndef hi(data):\n    return data\n\n\n"
        "w = flowkit.Workflow('w', [hi])\n")
    dev = Dev(tmp_path, "-A", "plainflows", "--port", str(free_port()))
    try:
        dev.wait_for("flowkit dev: waiting for a change to a Python file under", timeout=60)
        out = dev.output()
        assert ("flowkit dev: plainflows makes no flowkit Celery app; add app = "
                "flowkit.create_celery_app(\"plainflows\", imports=[\"plainflows\"]) to it."
                in out), out
        assert "redis at" not in out and "stopping everything" not in out, out  # none started
        os.killpg(dev.proc.pid, signal.SIGINT)
        assert dev.proc.wait(30) == 130
    finally:
        _kill_leftovers(dev, {})
