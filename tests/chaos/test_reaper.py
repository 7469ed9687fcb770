"""Reaper safety: two reapers act on a lapsed run once; a slow step that heartbeats is left alone."""

from __future__ import annotations

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flowkit import config, events
from flowkit.engine import notify, trace
from flowkit.store import get_store
from flowkit.store.keys import shard_of
from tests.chaos.conftest import of_type, open_gate, side_effects, waiting
from tests.chaos.workflows import doomed, held
from tests.conftest import wait_until

HOLD = "1:chaos.hold"


@pytest.fixture
def webhook():
    """A real HTTP endpoint on loopback; yields (url, queue of the JSON bodies it received)."""
    received: queue.Queue = queue.Queue()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.put((self.headers["Content-Type"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/flowkit-failed", received
    server.shutdown()


def lapsed_run(deployment):
    """A run whose worker was SIGKILLed mid-step, once its lease has lapsed (no reaper runs)."""
    a = deployment.worker("a")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    holder = waiting(run)["worker"]
    # its opening trace record goes out with the next batch: let it, so the span exists
    wait_until(lambda: any(s.get("step") == HOLD for s in trace.read(run.id)), 5,
               "the held attempt's span")
    a.kill()
    store = get_store()
    lapses = store.redis.zscore(store.keys.leases(shard_of(run.id)), f"{run.id} {HOLD}")
    time.sleep(max(0.0, lapses - time.time()) + 0.05)  # a lease lapses by the clock, not an event
    return run, holder


@pytest.mark.long  # mostly waiting (5-9 s): beside the rest (scripts/test)
def test_two_reapers_at_once_restart_a_lapsed_run_once(chaos_app, deployment):
    run, _ = lapsed_run(deployment)
    reports = deployment.sweepers(2)

    assert sorted(len(r["restarted"]) for r in reports) == [0, 1]
    assert len(of_type(run.events(), "run.restarted")) == 1
    assert run.refresh().restarts == 1 and run.refresh().gen == 1
    deployment.worker("b")
    assert waiting(run)["attempt"] == 2
    open_gate(run)
    assert run.wait(30).state == "succeeded"
    assert side_effects(run, "finished") == {"0:chaos.work": 1, HOLD: 1, "2:chaos.work": 1}


def test_two_reapers_giving_up_fail_the_run_once_and_notify_once(chaos_app, deployment, webhook):
    url, received = webhook
    run, _ = lapsed_run(deployment)
    reports = deployment.sweepers(2, FLOWKIT_MAX_RESTARTS="0", FLOWKIT_FAILURE_WEBHOOK=url)

    assert sorted(len(r["gave_up"]) for r in reports) == [0, 1]
    failed = run.refresh()
    assert failed.state == "failed" and failed.failed_step == HOLD
    assert failed.error["message"] == (
        f"gave up after 0 restarts; last: worker lost (no heartbeat for "
        f"{config.get_settings().heartbeat_lapse:g}s) during step {HOLD}"
    )
    history = run.events()
    assert [e.type for e in history].count("run.failed") == 1 and history[-1].type == "run.failed"
    content_type, body = received.get(timeout=10)
    assert content_type == "application/json"
    assert body["type"] == "run.failed" and body["run_id"] == run.id
    assert body["failed_step"] == HOLD and body["error"]["type"] == "WorkerLost"
    assert received.empty(), "the webhook was called twice"
    # the lost attempt's span ends with the run, saying so
    [held_span] = [s for s in trace.read(run.id) if s.get("step") == HOLD]
    assert held_span["status"] == "abandoned" and held_span["end"] == failed.finished_at
    assert held_span["reason"] == "the run ended (failed) while it ran"


def test_a_failed_step_notifies_the_webhook_once(chaos_app, deployment, webhook, monkeypatch):
    url, received = webhook
    deployment.worker("a", FLOWKIT_FAILURE_WEBHOOK=url)
    run = doomed.start({"n": 0, "chunks": 1, "pause": 0.01})
    assert run.wait(30).state == "failed"
    _, body = received.get(timeout=10)
    assert body["run_id"] == run.id and body["workflow"] == "chaos.doomed"
    assert body["failed_step"] == "1:chaos.broken"
    assert body["error"]["message"] == "the model returned nonsense"
    assert "input" not in body and "output" not in body
    # a second notification of the same failure (another process racing) posts nothing
    monkeypatch.setenv("FLOWKIT_FAILURE_WEBHOOK", url)
    config.reset()
    try:
        notify.run_failed(run.id)
    finally:
        monkeypatch.undo()
        config.reset()
    assert received.empty()


@pytest.mark.long  # mostly waiting through sweeps: beside the rest (scripts/test)
def test_a_slow_step_with_a_fresh_heartbeat_is_never_restarted(chaos_app, deployment):
    settings = config.get_settings()
    worker = deployment.worker("a")
    beat = deployment.beat()
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    holder = waiting(run)["worker"]
    beat_log = deployment.tmp_path / "beat0.log"
    # the window below counts beat's sends: it opens once beat is up, not while it starts
    wait_until(lambda: beat_log.exists() and "Sending due task flowkit-reaper" in
               beat_log.read_text(), 30, "beat's first sweep")
    blocked_since = time.time()

    # for three lapses the step stays blocked in I/O while beat's reaper sweeps
    cursor = run.events()[-1].id
    deadline = time.monotonic() + 3 * settings.heartbeat_lapse
    while (left := deadline - time.monotonic()) > 0:
        for event in events.parse(get_store().read_new(run.id, cursor, int(min(left, 1.0) * 1000) + 1)):
            cursor = event.id
            assert event.type != "run.restarted", f"a live step was restarted: {event.data}"

    record = run.refresh()
    assert record.state == "running" and record.worker == holder
    assert record.heartbeat_at > blocked_since + 2 * settings.heartbeat_lapse
    assert time.time() - record.heartbeat_at < 2 * settings.heartbeat_interval + 1
    # the reaper did sweep meanwhile: beat sent it, the worker ran it
    assert beat.poll() is None
    sent = beat_log.read_text().count("Sending due task flowkit-reaper")
    # a loaded machine eats some intervals: at least half of them
    assert sent >= 3 * settings.heartbeat_lapse / settings.reaper_interval / 2
    assert any("Task flowkit.reaper[" in line and "succeeded" in line for line in list(worker.lines))
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded" and done.restarts == 0
    assert side_effects(run, "started")[HOLD] == 1
