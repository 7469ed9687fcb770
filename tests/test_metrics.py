"""Metrics: the web process's ``GET /metrics`` and a worker's metrics port, scraped for real
and parsed with prometheus_client's parser, move as runs happen.

The web app is served in this process (tests/api/conftest.py); the workers are real
``celery worker`` processes of tests.app with tests.metrics_workflows, on queues no other
test worker consumes, so the steps they count are exactly this module's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import flowkit
from flowkit.testing import FakeLLMServer, WorkerProcess, free_port
from tests import metrics_workflows as mw
from tests.api.conftest import API_KEY, make_app, serve
from tests.api.helpers import start, ws_connect
from tests.conftest import ROOT, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}
INCLUDE = ["--include", "tests.metrics_workflows"]


def scrape(url: str, headers: dict | None = None) -> str:
    response = httpx.get(url, headers=headers or {}, timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def value(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` whose labels include ``labels`` (0: none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


class Scraper:
    """Scrapes one endpoint; ``delta`` says how much a sample moved since ``mark``."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        self.url, self.headers, self.before = url, headers, ""

    def mark(self) -> Scraper:
        self.before = scrape(self.url, self.headers)
        return self

    def now(self) -> str:
        return scrape(self.url, self.headers)

    def delta(self, sample: str, after: str | None = None, **labels: str) -> float:
        after = self.now() if after is None else after
        return value(after, sample, **labels) - value(self.before, sample, **labels)


@pytest.fixture(scope="module")
def llm_server():
    server = FakeLLMServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def metrics_worker(flowkit_env, llm_server):
    """A threads worker of the metrics queue with its metrics port."""
    port = free_port()
    env = {**flowkit_env, "FLOWKIT_METRICS_PORT": str(port),
           "METRICS_LLM_URL": llm_server.base_url}
    proc = WorkerProcess("tests.app", name="metrics", queues=(mw.QUEUE,), pool="threads",
                         concurrency=4, env=env, extra=INCLUDE, cwd=ROOT).start()
    proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
    yield proc
    proc.terminate(20)


@pytest.fixture(scope="module")
def web(flowkit_env):
    """The API mounted on a Flask app in this process (its /metrics needs the API key)."""
    yield from serve(make_app(ping_interval=0.3))


@pytest.fixture
def web_metrics(web, store) -> Scraper:
    return Scraper(f"{web.url}/metrics", AUTH)


# -- the web endpoint ------------------------------------------------------------------------


def test_web_metrics_need_full_access_unless_opened(web, store, flowkit_env):
    url = f"{web.url}/metrics"
    refused = httpx.get(url, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    with web.client() as c:
        run = start(c, "metrics_unserved", {})
    run_token = httpx.get(url, headers={"Authorization": f"Bearer {run['token']}"}, timeout=10)
    assert run_token.status_code == 403, "a run token reads one run, not the deployment"
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401

    text = scrape(url, AUTH)
    assert value(text, "flowkit_redis_up") == 1
    assert value(text, "flowkit_broker_up") == 1
    assert value(text, "flowkit_runs_started_total", workflow="metrics_unserved") == 1

    # an owner-scoped caller of the host app sees its own runs, not the deployment's
    for served in serve(make_app(keys=[], authorize=lambda request: "acme")):
        assert httpx.get(f"{served.url}/metrics", timeout=10).status_code == 403
    for served in serve(make_app(keys=[], authorize=lambda request: True)):
        assert "flowkit_runs_active" in scrape(f"{served.url}/metrics")
    for served in serve(make_app(metrics_open=True)):
        opened = httpx.get(f"{served.url}/metrics", timeout=10)
        assert opened.status_code == 200 and "flowkit_queue_depth" in opened.text
        assert httpx.get(f"{served.url}/runs", timeout=10).status_code == 401, \
            "opening the metrics opens nothing else"
    flowkit.cancel(run["id"])


@pytest.mark.parametrize("accept", ["application/openmetrics-text; version=abc",
                                    "text/plain; version=abc"])
def test_an_accept_version_that_is_not_a_number_gets_the_text_format(web, accept):
    """prometheus_client compared the version as given with a tuple: a TypeError, a 500."""
    answer = httpx.get(f"{web.url}/metrics", headers={**AUTH, "Accept": accept}, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "flowkit_redis_up" in answer.text


def test_runs_started_ended_and_restarted_are_counted_by_workflow_state_and_reason(
        web_metrics, metrics_worker):
    m = web_metrics.mark()
    runs = [mw.steps.start({"n": i}) for i in range(3)]
    failing = mw.failing.start({})
    assert [r.result(timeout=30) for r in runs] == [{"n": 2 * (i + 1)} for i in range(3)]
    assert failing.wait(30).state == "failed"
    cancelled = flowkit.cancel(mw.unserved.start({}).id)
    assert cancelled.state == "cancelled"

    after = m.now()
    assert m.delta("flowkit_runs_started_total", after, workflow="metrics_steps") == 3
    assert m.delta("flowkit_runs_ended_total", after, workflow="metrics_steps",
                   state="succeeded") == 3
    assert m.delta("flowkit_runs_ended_total", after, workflow="metrics_failing",
                   state="failed") == 1
    assert m.delta("flowkit_runs_ended_total", after, workflow="metrics_unserved",
                   state="cancelled") == 1
    assert m.delta("flowkit_runs_ended_total", after) == 5

    flowkit.retry(failing.id)
    assert failing.wait(30).state == "failed"
    after = m.now()
    assert m.delta("flowkit_run_restarts_total", after, reason="requested") == 1
    assert m.delta("flowkit_runs_ended_total", after, workflow="metrics_failing",
                   state="failed") == 2, "a retried run counts again when it ends again"
    assert m.delta("flowkit_runs_started_total", after, workflow="metrics_failing") == 1


def test_queue_depth_and_the_oldest_queued_run_age_per_queue(web_metrics):
    m = web_metrics.mark()
    began = time.time()
    runs = [mw.unserved.start({}) for _ in range(3)]
    time.sleep(0.2)  # the age to measure, not a synchronisation
    after = m.now()
    assert m.delta("flowkit_queue_depth", after, queue=mw.UNSERVED) == 3
    age = value(after, "flowkit_queue_oldest_run_age_seconds", queue=mw.UNSERVED)
    assert 0.2 <= age <= time.time() - began
    assert value(after, "flowkit_queue_consumers", queue=mw.UNSERVED) == 0
    assert value(after, "flowkit_runs_active", state="queued") == 3
    for run in runs:
        flowkit.cancel(run.id)
    after = m.now()
    assert value(after, "flowkit_runs_active", state="queued") == 0
    assert value(after, "flowkit_queue_oldest_run_age_seconds", queue=mw.UNSERVED) == 0


def test_waiting_runs_are_counted_until_answered(web_metrics, metrics_worker):
    m = web_metrics.mark()
    run = mw.approval.start({})
    wait_until(lambda: run.refresh().state == "waiting", 30, "the run to wait for input")
    assert value(m.now(), "flowkit_runs_active", state="waiting") == 1
    flowkit.send_input(run.id, "ok", {"ok": True})
    assert run.result(timeout=30) == {"ok": True}
    after = m.now()
    assert value(after, "flowkit_runs_active", state="waiting") == 0
    assert m.delta("flowkit_runs_ended_total", after, workflow="metrics_approval",
                   state="succeeded") == 1


def test_stream_subscribers_of_the_web_process(web, web_metrics, metrics_worker):
    m = web_metrics.mark()
    with web.client() as c:
        run = start(c, "metrics_approval", {})
    sockets = [ws_connect(f"{web.ws_url}/runs/{run['id']}/stream", token=run["token"])
               for _ in range(2)]
    try:
        wait_until(lambda: m.delta("flowkit_stream_subscribers") == 2, 10, "two subscribers")
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: m.delta("flowkit_stream_subscribers") == 0, 10, "the subscribers to leave")
    flowkit.cancel(run["id"])


# -- a worker's metrics port --------------------------------------------------------------------


def test_a_worker_port_counts_its_steps_retries_and_llm_calls(metrics_worker, store):
    m = Scraper(metrics_worker.metrics_url).mark()
    runs = [mw.steps.start({"n": i}) for i in range(2)]
    retried = mw.retried.start({"fail_times": 2})
    asked = mw.asking.start({"prompt": "say something"})
    for run in (*runs, retried, asked):
        run.result(timeout=30)

    after = m.now()
    count = "flowkit_step_duration_seconds_count"
    assert m.delta(count, after, component="m.inc", outcome="ok") == 2
    assert m.delta(count, after, component="m.twice", outcome="ok") == 2
    assert m.delta(count, after, component="m.flaky", outcome="error") == 2
    assert m.delta(count, after, component="m.flaky", outcome="ok") == 1
    assert m.delta("flowkit_step_duration_seconds_sum", after, component="m.inc") > 0
    assert m.delta("flowkit_step_retries_total", after, component="m.flaky") == 2

    llm = {"provider": "fake", "model": mw.MODEL}
    assert m.delta("flowkit_llm_calls_total", after, status="ok", operation="chat.completions",
                   **llm) == 1
    assert m.delta("flowkit_llm_tokens_total", after, kind="prompt", **llm) > 0
    assert m.delta("flowkit_llm_tokens_total", after, kind="completion", **llm) == 6
    assert m.delta("flowkit_llm_cost_usd_total", after, **llm) > 0
    assert m.delta("flowkit_llm_call_duration_seconds_count", after, **llm) == 1
    # the deployment's numbers are the web endpoint's: summing every target counts them once
    assert "flowkit_runs_started_total" not in names(after)
    # an Accept version prometheus_client cannot compare: the text format, not a 500
    odd = httpx.get(metrics_worker.metrics_url, headers={"Accept": "text/plain; version=abc"},
                    timeout=10)
    assert odd.status_code == 200 and odd.headers["Content-Type"].startswith(
        "text/plain; version=0.0.4") and "flowkit_step_duration_seconds" in odd.text


def test_an_attempt_whose_output_cannot_be_kept_counts_as_an_error(metrics_worker, store):
    """The attempt was observed ok before its output was found not JSON: the step failed,
    its metrics (and its OTel span) said ok."""
    m = Scraper(metrics_worker.metrics_url).mark()
    run = mw.unkeepable.start({})
    with pytest.raises(flowkit.StepError, match="must be JSON-serialisable"):
        run.result(timeout=30)
    after = m.now()
    count = "flowkit_step_duration_seconds_count"
    assert m.delta(count, after, component="m.unkept", outcome="error") == 1
    assert m.delta(count, after, component="m.unkept", outcome="ok") == 0
    assert m.delta("flowkit_step_retries_total", after, component="m.unkept") == 0


@pytest.mark.long  # mostly waiting (5-9 s): beside the rest (scripts/test)
def test_a_prefork_worker_serves_its_childrens_samples_even_of_children_gone(
        flowkit_env, store, tmp_path):
    port = free_port()
    # this worker also serves the deployment's metrics (a deployment without a web process)
    env = {**flowkit_env, "FLOWKIT_METRICS_PORT": str(port), "TMPDIR": str(tmp_path),
           "FLOWKIT_METRICS_DEPLOYMENT": "true"}
    # a SIGKILLed worker's directory (its pid gone) is removed; a live worker's is kept
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / f"flowkit-metrics-{gone.pid}-crashed").mkdir()
    (tmp_path / f"flowkit-metrics-{os.getpid()}-alive").mkdir()
    # each child runs one task and is replaced: what a child counted outlives it
    proc = WorkerProcess("tests.app", name="metrics-prefork", queues=(mw.PREFORK,),
                         pool="prefork", concurrency=2, env=env, cwd=ROOT,
                         extra=[*INCLUDE, "--max-tasks-per-child", "1"]).start()
    try:
        assert not (tmp_path / f"flowkit-metrics-{gone.pid}-crashed").exists()
        (tmp_path / f"flowkit-metrics-{os.getpid()}-alive").rmdir()  # it was kept
        [made] = [p for p in os.listdir(tmp_path) if p.startswith("flowkit-metrics-")]
        assert made.startswith(f"flowkit-metrics-{proc.pid}-")
        m = Scraper(f"http://127.0.0.1:{port}/metrics").mark()
        runs = [mw.on_prefork.start({"n": i}) for i in range(6)]
        assert [r.result(timeout=60) for r in runs] == [{"n": 2 * (i + 1)} for i in range(6)]
        after = m.now()
        count = "flowkit_step_duration_seconds_count"
        assert m.delta(count, after, component="m.inc", outcome="ok") == 6
        assert m.delta(count, after, component="m.twice", outcome="ok") == 6
        assert m.delta("flowkit_runs_ended_total", after, workflow="metrics_on_prefork",
                       state="succeeded") == 6
        assert value(after, "flowkit_queue_consumers", queue=mw.PREFORK) == 1
        pids = {name.rsplit("_", 1)[1] for name in os.listdir(tmp_path / made)}
        assert len(pids) >= 3, f"children replaced after each task wrote their own files: {pids}"
    finally:
        assert proc.terminate(30) == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith("flowkit-metrics-")], \
        "the worker removes the directory it made"


# -- several web processes (gunicorn) ------------------------------------------------------------


def _subscribers_by_pid(directory) -> dict[int, float]:
    """Each gunicorn worker's own flowkit_stream_subscribers, read from its file."""
    from prometheus_client.mmap_dict import MmapedDict

    found: dict[int, float] = {}
    for path in directory.glob("gauge_livesum_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, val, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            if "flowkit_stream_subscribers" in key:
                found[pid] = found.get(pid, 0.0) + val
    return found


def test_gunicorn_workers_add_up_in_every_scrape(flowkit_env, store, tmp_path):
    """Two gunicorn workers with PROMETHEUS_MULTIPROC_DIR: whichever answers the scrape, it
    counts the subscribers both hold; a worker killed stops counting (child_exit)."""
    from tests.api.helpers import Gunicorn

    shared = tmp_path / "prom"
    shared.mkdir()
    web = Gunicorn({**flowkit_env, "FLOWKIT_API_KEYS": API_KEY, "PROMETHEUS_MULTIPROC_DIR":
                    str(shared)}, tmp_path / "web.log", FLOWKIT_WEB_WORKERS="2",
                   # a thread per WebSocket: up to 40 may land on one worker, and a scrape
                   # that finds every thread of its worker busy would wait
                   FLOWKIT_WEB_THREADS="100",
                   FLOWKIT_WORKFLOW_MODULES="tests.workflows,tests.metrics_workflows").start()
    sockets = []
    try:
        with httpx.Client(base_url=web.url, headers=AUTH, timeout=30) as c:
            run = start(c, "metrics_unserved", {})  # stays queued: its streams stay open
        ws_url = "ws" + web.url[len("http"):] + f"/runs/{run['id']}/stream"
        while len([n for n in _subscribers_by_pid(shared).values() if n]) < 2:
            assert len(sockets) < 40, "the kernel gave every connection to one worker"
            sockets.append(ws_connect(ws_url, token=run["token"]))
            wait_until(lambda: sum(_subscribers_by_pid(shared).values()) == len(sockets), 10,
                       "the new subscriber to be counted")
        for _ in range(6):  # either worker answers; each counts both
            text = scrape(f"{web.url}/metrics", AUTH)
            assert value(text, "flowkit_stream_subscribers") == len(sockets)
            assert value(text, "flowkit_runs_active", state="queued") == 1

        by_pid = _subscribers_by_pid(shared)
        victim = next(pid for pid, n in by_pid.items() if n)
        os.kill(victim, 9)
        wait_until(lambda: victim not in _subscribers_by_pid(shared), 20,
                   "the master to mark the killed worker dead")
        left = sum(_subscribers_by_pid(shared).values())
        assert left == len(sockets) - by_pid[victim]
        assert value(scrape(f"{web.url}/metrics", AUTH), "flowkit_stream_subscribers") == left
    finally:
        for sock in sockets:
            sock.close()
        web.stop()
    flowkit.cancel(run["id"])


def test_a_restart_after_a_worker_died_counts_as_lease_lapsed(web_metrics, flowkit_env):
    from flowkit.engine import reaper
    from flowkit.store import get_store

    m = web_metrics.mark()
    doomed = WorkerProcess("tests.app", name="metrics-doomed", queues=(mw.DOOMED,),
                           pool="threads", concurrency=1, env=flowkit_env, extra=INCLUDE,
                           cwd=ROOT).start()
    try:
        run = mw.held.start({})
        assert get_store().redis.blpop(f"mheld:{run.id}", timeout=30), "the step never began"
    finally:
        doomed.kill()
    # the reaper restarts the run once its lease lapses (FLOWKIT_HEARTBEAT_LAPSE, 2 s here)
    wait_until(lambda: run.id in reaper.sweep()["restarted"], 20, "the reaper to restart it")
    after = m.now()
    assert m.delta("flowkit_run_restarts_total", after, reason="lease_lapsed") == 1
    assert m.delta("flowkit_run_restarts_total", after) == 1
    flowkit.cancel(run.id)


def test_a_waiting_run_that_expired_leaves_the_waiting_count(web_metrics, store):
    from flowkit.store.keys import shard_of

    m = web_metrics.mark()
    # the index entry of a run whose keys expired while it waited (nothing else waits here)
    store.redis.zadd(store.keys.waiting(shard_of("expired-run")), {"expired-run": 1000.0})
    assert value(m.now(), "flowkit_runs_active", state="waiting") == 1
    store.trim_indexes(cutoff=2000.0)  # beat's retention task
    assert value(m.now(), "flowkit_runs_active", state="waiting") == 0


@contextlib.contextmanager
def frozen_server() -> Iterator[int]:
    """A port that takes connections and never answers (a frozen Redis or broker): the
    kernel completes each handshake into the listen backlog; nothing reads or replies."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def in_time(call, seconds: float):
    """``call()``'s result, or what it raised, if it ends within ``seconds`` (else a failed
    test, not a hung one: the reads fixed here waited for good)."""
    done: list = []

    def run() -> None:
        try:
            done.append((True, call()))
        except Exception as exc:
            done.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"still waiting after {seconds} s"
    returned, outcome = done[0]
    if not returned:
        raise outcome
    return outcome


@pytest.mark.long  # it mostly waits: beside the rest (the fast tier neared 15 min)
def test_a_scrape_answers_in_time_when_redis_and_the_broker_never_answer(store):
    """Servers that take connections but never answer (frozen) held the scrape for good (the
    broker's passive declare had no timeout; Redis's commands waited 60 s each), and each
    timed-out Prometheus scrape left a web thread and a broker connection stuck."""
    from flowkit import config
    from flowkit.defaults import METRICS_SCRAPE_SECONDS
    from flowkit.engine import broker
    from flowkit.metrics import render
    from flowkit.metrics.deployment import DeploymentCollector
    from flowkit.store import Store

    with frozen_server() as port:
        url = f"redis://127.0.0.1:{port}/0"
        frozen = Store(config.get_settings().replace(
            redis_url=url, redis_retry_seconds=0.5, redis_socket_timeout=1.0))
        began = time.monotonic()
        body, _ = in_time(lambda: render(None, DeploymentCollector(
            lambda: frozen, depths=lambda queues: broker.queue_depths(queues, url=url))),
            METRICS_SCRAPE_SECONDS + 5)
        text = body.decode()
        assert {"flowkit_redis_up", "flowkit_broker_up"} <= names(text)
        assert value(text, "flowkit_redis_up") == 0 and value(text, "flowkit_broker_up") == 0
        assert time.monotonic() - began < METRICS_SCRAPE_SECONDS + 2
        # the reaper's sweeps read depths the same way: they end too
        with pytest.raises(Exception, match="Timeout reading"):
            in_time(lambda: broker.queue_depths(["q"], url=url, timeout=1.0), 10)


@pytest.mark.long
def test_with_redis_away_the_broker_still_says_its_queues_depths(store):
    """The scrape ended at Redis's outage: a broker of its own that answered was left out
    (``flowkit_broker_up`` and the queue depths gone, when they were most wanted)."""
    from flowkit import config
    from flowkit.metrics import render
    from flowkit.metrics.deployment import DeploymentCollector
    from flowkit.store import Store

    dead = f"redis://127.0.0.1:{free_port()}/0"
    unreachable = Store(config.get_settings().replace(redis_url=dead, redis_retry_seconds=0.5))
    with frozen_server() as port:  # and one that holds its reads: they must not hold the broker's
        frozen = Store(config.get_settings().replace(
            redis_url=f"redis://127.0.0.1:{port}/0", redis_retry_seconds=0.0,
            redis_socket_timeout=60.0))
        # four held reads filled the one pool the broker's reads shared (4 s a scrape)
        for away in (unreachable, frozen, frozen, frozen, frozen):
            body, _ = render(None, DeploymentCollector(lambda away=away: away,
                                                       served=lambda: [mw.steps]))
            text = body.decode()
            assert value(text, "flowkit_redis_up") == 0 and value(text, "flowkit_broker_up") == 1
            depths = [s for f in text_string_to_metric_families(text) for s in f.samples
                      if s.name == "flowkit_queue_depth"]
            assert mw.QUEUE in {s.labels["queue"] for s in depths}


def test_a_scrape_answers_when_redis_and_the_broker_do_not(store):
    """Redis down: the scrape still answers, says so, and serves this process's metrics."""
    from flowkit import config
    from flowkit.metrics import install, render
    from flowkit.metrics.deployment import DeploymentCollector
    from flowkit.store import Store

    install()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    unreachable = Store(config.get_settings().replace(redis_url=dead, redis_retry_seconds=0.5))
    began = time.monotonic()
    body, content_type = render(None, DeploymentCollector(lambda: unreachable))
    assert time.monotonic() - began < 5
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert value(text, "flowkit_redis_up") == 0
    assert "flowkit_runs_active" not in names(text)
    assert "flowkit_stream_subscribers" in names(text), "this process's metrics still answer"
