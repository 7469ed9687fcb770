"""A run whose message was lost before any worker took it: the reaper enqueues it again;
a run that only waits in line behind a backlog longer than FLOWKIT_QUEUED_TIMEOUT (or
whose next step does, longer than FLOWKIT_STALL_TIMEOUT) is not lost, and is left alone;
a worker that beats but whose consumer takes nothing from a queue where runs wait is
reported (/healthz, flowkit doctor) until it takes them again."""

from __future__ import annotations

import pytest
import redis

from flowkit import config
from flowkit.engine import doctor
from flowkit.engine.broker import PRIORITY_STEPS, get_app
from flowkit.engine.control import live_workers
from flowkit.store import get_store
from tests.api.conftest import make_app, serve
from tests.chaos.conftest import of_type, side_effects, wait_for
from tests.chaos.workflows import QUEUE, handoff, ten, tick


def test_a_run_still_queued_after_its_message_was_lost_is_redriven(chaos_app, deployment):
    run = handoff.start({"n": 0, "chunks": 1, "pause": 0.01})
    broker = redis.Redis.from_url(config.get_settings().broker)
    # kombu keeps a Redis queue in a list of its name, one per priority step after the first
    lists = [QUEUE, *(f"{QUEUE}\x06\x16{p}" for p in PRIORITY_STEPS[1:])]
    assert broker.delete(*lists) == 1

    quick = {"FLOWKIT_QUEUED_TIMEOUT": "2"}
    deployment.worker("a", **quick)
    deployment.beat(**quick)
    done = run.wait(30)
    assert done.state == "succeeded", done.error
    [restarted] = of_type(run.events(), "run.restarted")
    assert restarted.data["reason"].startswith("still queued after 2s")
    assert done.restarts == 1
    assert side_effects(run, "started") == {"0:chaos.work": 1, "1:chaos.handed_on": 1}


@pytest.mark.long  # mostly waiting for a slot, on purpose: beside the rest (scripts/test)
def test_runs_waiting_in_a_backlog_longer_than_the_queued_timeout_are_left_in_line(
        chaos_app, deployment):
    quick = {"FLOWKIT_QUEUED_TIMEOUT": "1"}
    # one worker slot, eight runs of 0.6 s: the last waits about 5 timeouts for its turn
    runs = [tick.start({"n": i, "chunks": 3, "pause": 0.2}) for i in range(8)]
    # and one more behind them, unchecked: the queue is never empty while the eight are
    # taken, as in a real backlog (a run taken from an emptied queue, between the worker's
    # pop and its step's lease, looks lost for that moment)
    behind = tick.start({"n": 8, "chunks": 1, "pause": 0})
    deployment.beat(**quick)
    deployment.worker("a", concurrency=1, **quick)
    assert behind.wait(60).state == "succeeded"
    for run in runs:
        done = run.wait(60)
        assert done.state == "succeeded", done.error  # not "gave up ... (message lost?)"
        assert done.restarts == 0
        assert of_type(run.events(), "run.restarted") == []
        assert side_effects(run, "started") == {"0:chaos.work": 1}


@pytest.mark.long  # mostly idle waiting: beside the rest (scripts/test)
def test_runs_whose_next_steps_wait_in_a_backlog_longer_than_the_stall_timeout_go_on(
        chaos_app, deployment):
    quick = {"FLOWKIT_STALL_TIMEOUT": "1"}
    # one worker slot, five ten-step runs taking turns: each next step waits about 1.2 s
    # behind the other runs' (a step of 0.3 s is past the inline budget: it goes through
    # the queue), while at least three other messages are queued
    runs = [ten.start({"n": 0, "chunks": 2, "pause": 0.15}) for _ in range(5)]
    deployment.beat(**quick)
    deployment.worker("a", concurrency=1, **quick)
    for run in runs:
        done = run.wait(90)
        assert done.state == "succeeded", done.error
        assert done.restarts == 0
        assert of_type(run.events(), "run.restarted") == []
        assert side_effects(run, "started") == {f"{i}:chaos.work": 1 for i in range(10)}


def test_a_worker_whose_consumer_takes_nothing_is_reported_while_its_runs_wait_in_line(
        chaos_app, deployment):
    quick = {"FLOWKIT_QUEUED_TIMEOUT": "1"}
    store = get_store()
    deployment.worker("a", **quick)
    node = wait_for(lambda: next((w["name"] for w in live_workers(store)
                                  if w["name"].startswith("a@") and "held" in w), None),
                    30, "worker a to beat with its load")
    # its consumer of the runs' queue stops, as a hung broker channel would; it still beats
    # and still lists the queue (tests.chaos.app's control command). Sent again until it
    # answers: a broadcast is a Redis PUBLISH, lost when the worker's control channel was
    # not subscribed yet (it beats and announces before; a busy machine widens the gap)
    assert wait_for(lambda: get_app().control.broadcast(
        "chaos_stall_consumer", arguments={"queue": QUEUE}, destination=[node], reply=True,
        timeout=2), 30, "worker a to stall its consumer")
    run = tick.start({"n": 0, "chunks": 1, "pause": 0})
    deployment.beat(**quick)

    [problem] = wait_for(store.stuck_consumers, 30, "the reaper to report worker a")
    assert problem["worker"] == node and problem["queues"] == {QUEUE: 1}
    assert problem["free"] >= 1 and problem["quiet"] >= 1
    for served in serve(make_app()):
        health = served.client().get("/healthz").json()
    assert health["status"] == "degraded"
    [said] = [p for p in health["problems"] if node in p]
    assert "took no message" in said and "restart the worker" in said
    findings = doctor.examine(None, QUEUE, None, store)
    assert [f.level for f in findings if f.check == "consumers"] == [doctor.FAILURE], (findings, store.stuck_consumers())
    waited = run.refresh()
    assert waited.state == "queued" and waited.restarts == 0  # waits in line, not re-driven

    assert get_app().control.add_consumer(QUEUE, destination=[node], reply=True, timeout=10)
    done = run.wait(30)
    # A sweep between the worker taking the message and starting the step finds the queue
    # empty and re-drives the run (reaper._lost, documented): the step still runs once.
    assert done.state == "succeeded" and done.restarts <= 1
    assert side_effects(done, "finished") == {"0:chaos.work": 1}
    wait_for(lambda: not store.stuck_consumers(), 30, "the report to clear")
