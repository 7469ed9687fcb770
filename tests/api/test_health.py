"""Health that tells the truth: /healthz lists live workers and says which queue has no
consumer; a queued run says what it waits for, in its record and on its watch page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest
from playwright.sync_api import expect

import flowkit
from flowkit import config
from tests import workflows as wf
from tests.api.conftest import API_KEY, make_app, serve
from tests.api.helpers import Gunicorn, start
from tests.api.test_watch import browser  # noqa: F401 - the Chromium fixture
from tests.conftest import wait_until


@pytest.fixture(autouse=True)
def _beat_swept(request):
    """Beat's sweep, recorded as a deployment's beat records it, where a worker runs: its
    absence is a problem of its own (tested below)."""
    if "worker" in request.fixturenames:
        store = request.getfixturevalue("store")
        store.record_sweep(time.time(), config.get_settings().reaper_interval)


def health(app_options: dict) -> dict:
    """/healthz as an operator sees it (an API key: the details too)."""
    for served in serve(make_app(**app_options)):
        with served.client() as operator:
            response = operator.get("/healthz")
            assert response.status_code == 200, response.text
            return response.json()
    raise AssertionError("unreachable")


def test_healthz_tells_anyone_the_status_and_only_full_access_the_details(store, worker):
    """Workers' hostnames, pids and queues, and problems naming workflows, went to anyone."""
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    for served in serve(make_app(workflows=["simple", "lonely"],
                                 authorize=lambda request: request.headers.get("X-Tenant"))):
        for caller in (served.client(key=None), served.client(key="not-a-key"),
                       served.client(key=None, headers={"X-Tenant": "acme"})):
            response = caller.get("/healthz")
            assert response.status_code == 200
            assert response.json() == {"status": "degraded", "redis": True}
        detailed = served.client().get("/healthz").json()
        assert detailed["problems"] == ["no live worker consumes queue lonely (workflow lonely)"]
        assert detailed["workers"]


def test_healthz_says_when_no_worker_of_a_queue_defines_a_served_workflow(
        store, worker, monkeypatch):
    """The web process served a workflow whose module the workers' app did not import: its
    steps were dropped as unknown tasks and its runs failed, while /healthz said ok."""
    monkeypatch.setitem(flowkit.workflow._workflows, "only_here", None)  # restored after
    flowkit.Workflow("only_here", [wf.add_one])  # after the worker announced what it defines
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    detailed = health({"workflows": ["simple", "only_here"]})
    assert detailed["status"] == "degraded"
    assert detailed["problems"] == [
        "no live worker of queue flowkit defines workflow only_here (its workers' app does "
        "not import it): its steps are dropped"]


def test_a_probe_does_not_depend_on_the_host_apps_authorize(store, worker):
    """Asking authorize for the details made a probe fail with it (a 401 it aborts
    with, an exception, its database down), and cost a call every probe."""
    asked = []

    def authorize(request):
        asked.append(request.path)
        raise KeyError("session")

    for served in serve(make_app(keys=[], authorize=authorize)):
        probe = served.client(key=None).get("/healthz")
        assert probe.status_code == 200 and set(probe.json()) == {"status", "redis"}
        assert asked == []
        with_cookie = served.client(key=None, headers={"Cookie": "session=x"}).get("/healthz")
        assert with_cookie.status_code == 200 and set(with_cookie.json()) == {"status", "redis"}
        assert asked == ["/healthz"]


def test_healthz_lists_the_live_workers_and_is_ok_when_every_queue_has_one(store, worker):
    # the store fixture flushed the workers' presence: await the next heartbeat
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    body = health({"workflows": ["simple"]})
    assert body["status"] == "ok" and body["problems"] == [] and body["redis"] is True
    [main] = [w for w in body["workers"] if w["name"].startswith("main@")]
    assert main["queues"] == ["flowkit"] and main["pool"] == "thread"
    assert main["concurrency"] == 4 and main["seconds_since_beat"] < 5


def test_healthz_is_degraded_when_a_served_workflow_routes_to_a_queue_nobody_consumes(
        store, worker):
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    body = health({"workflows": ["simple", "lonely"]})
    assert body["status"] == "degraded"
    assert body["problems"] == ["no live worker consumes queue lonely (workflow lonely)"]


def test_healthz_is_degraded_when_beat_has_not_swept_lately(store, worker):
    """Beat down: no crashed run restarted, no timer or schedule fired, and /healthz said
    ok while runs sat overdue with no reason given."""
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    store.record_sweep(time.time() - 600, 5.0)  # beat's last sweep, 10 minutes ago
    body = health({"workflows": ["simple"]})
    assert body["status"] == "degraded"
    assert body["problems"] == [
        "The reaper last swept 600s ago (every 5s expected): crashed runs are not restarted, "
        "timers and schedules do not fire. Start beat (celery -A <your app> beat, one "
        "process) and a worker."]


def test_healthz_is_degraded_with_no_live_worker(flowkit_env, tmp_path):
    # a database no worker heartbeats into, served by a web process of its own: this
    # deployment has no worker at all (this process's settings, patched, moved the session's
    # in-thread worker's heartbeats there too, now and then)
    empty = flowkit_env["FLOWKIT_REDIS_URL"].rsplit("/", 1)[0] + "/5"
    web = Gunicorn({**flowkit_env, "FLOWKIT_REDIS_URL": empty}, tmp_path / "web.log",
                   FLOWKIT_API_KEYS=API_KEY).start()
    try:
        body = httpx.get(f"{web.url}/healthz", timeout=20,
                         headers={"Authorization": f"Bearer {API_KEY}"}).json()
    finally:
        web.stop()
    assert body["status"] == "degraded" and body["workers"] == []
    assert body["problems"] == ["no live worker: start one (celery -A <your app> worker)"]


def test_under_flowkit_dev_no_live_worker_says_to_fix_the_code(flowkit_env):
    """flowkit dev's worker stops on code that fails to import, and starts again on a save:
    "start one (celery -A ...)" sent the user to start a second worker on the broken code.
    dev's node name (dev-<port>@host) is how a deployment knows its last worker was dev's."""
    import re

    from flowkit import defaults
    from flowkit.cli import dev
    from flowkit.engine import control
    from flowkit.store import Store

    # a database of its own (not the settings': the session's worker beats into theirs)
    settings = config.get_settings()
    store = Store(settings.replace(redis_url=settings.redis_url.rsplit("/", 1)[0] + "/6"))
    store.redis.flushdb()
    assert control.no_worker(store) == "no live worker: start one (celery -A <your app> worker)"
    node = dev._node(8000).replace("%h", "laptop")
    assert re.match(defaults.DEV_NODE_PATTERN, node)
    store.heartbeat([], f"{node}:4242", time.time() - 600, node=(node, {"queues": ["celery"]}))
    said = ("no live worker: flowkit dev's worker is down (its log, in the flowkit dev terminal, "
            "says why); it starts again when you save a fix")
    assert control.no_worker(store) == said  # what /healthz and a run's waiting_for say
    # a production worker that beat after dev's (the same Redis, reused): the usual words
    store.heartbeat([], "celery@box:7", time.time() - 60, node=("celery@box", {}))
    assert control.no_worker(store).endswith("start one (celery -A <your app> worker)")
    store.redis.flushdb()


def test_a_queued_run_says_what_it_waits_for_until_a_worker_takes_its_queue(
        api, client, store, browser, start_worker):  # noqa: F811 - the fixture imported above
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    run = start(client, "lonely", {"n": 1})
    record = client.get(f"/runs/{run['id']}").json()
    assert record["state"] == "queued"
    assert record["waiting_for"] == ("no live worker consumes queue lonely: start one with "
                                     "--queues lonely")
    page = browser.new_page()
    page.goto(f"{api.url}{run['urls']['watch']}?token={run['token']}")
    expect(page.locator("#waiting")).to_be_visible(timeout=30_000)  # CSP forbids eval
    assert "no live worker consumes queue lonely" in page.text_content("#waiting")

    start_worker("lonely", queues=(wf.LONELY,))  # what it was waiting for
    assert flowkit.get_run(run["id"]).wait(20).output == {"n": 2}
    expect(page.locator("#waiting")).to_be_hidden(timeout=30_000)
    assert client.get(f"/runs/{run['id']}").json()["waiting_for"] is None
    page.close()


def test_a_running_run_whose_next_step_no_worker_takes_says_so(store, worker, start_worker,
                                                                 flowkit_env):
    """Its first step ran; its second sits in a queue no live worker consumes: the run is
    running, and nothing said why it made no progress."""
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    run = wf.stranded.start({"n": 1})
    wait_until(lambda: any(e.type == "step.completed" for e in flowkit.history(run.id)),
               message="the first step's end")
    record = flowkit.get_run(run.id)
    assert record.state == "running"
    assert record.waiting_for == ("no live worker consumes queue lonely: start one with "
                                  "--queues lonely")
    # from a shell without the app's code (flowkit status without -A): the workers' routes
    status = subprocess.run([sys.executable, "-m", "flowkit.cli", "status", run.id, "--json"],
                            env={k: v for k, v in {**os.environ, **flowkit_env}.items()
                                 if k != "FLOWKIT_APP"},
                            capture_output=True, text=True, timeout=60)
    assert json.loads(status.stdout)["waiting_for"] == record.waiting_for, status
    with pytest.raises(TimeoutError, match=r"is still running after 0.1s: no live worker "
                                           "consumes queue lonely: start one with --queues "
                                           r"lonely\.$"):
        run.result(0.1)
    start_worker("lonely", queues=(wf.LONELY,))
    assert run.result(20) == {"n": 3}
    assert flowkit.get_run(run.id).waiting_for is None



def test_healthz_is_degraded_when_the_workers_take_steps_from_another_broker(
        store, worker, monkeypatch):
    """A web process sending to another database (a vhost, a kind of broker) than its
    workers take from said ok, while its runs sat queued until the reaper sent them again."""
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    settings = config.get_settings()
    elsewhere = settings.broker.rsplit("/", 1)[0] + "/14"
    monkeypatch.setattr(config, "_settings", settings.replace(broker_url=elsewhere))
    detailed = health({"workflows": ["simple"]})
    assert detailed["status"] == "degraded"
    [said] = detailed["problems"]
    assert said.startswith(f"This process sends steps to the broker at {elsewhere}, but "
                           "worker(s) "), said
    assert said.endswith("Set FLOWKIT_BROKER_URL (or FLOWKIT_REDIS_URL, when the broker is "
                         "the store's Redis) here as on the workers.")
    monkeypatch.setattr(config, "_settings", settings)
    assert health({"workflows": ["simple"]})["status"] == "ok"
