"""Where the reaper looks for a run's messages before it takes the run for stranded (the
crashes themselves: tests/chaos/test_between_steps.py): the queues its messages were
recorded going to count, not only its own and its workflow's (a step reached by
continue_with, a workflow the sweeping worker does not import)."""

from __future__ import annotations

import os
import time

import pytest
import redis
import redis.exceptions
from kombu.transport import redis as kombu_redis

import flowkit
from flowkit import component, config, continue_with
from flowkit import workflow as workflow_mod
from flowkit.engine import reaper
from flowkit.engine.reaper import _lost
from tests import workflows as wf
from tests.conftest import wait_until


def test_a_run_whose_message_waits_in_a_queue_it_was_handed_to_is_not_lost(store):
    run = wf.simple.start({"n": 1}, delay=3600)  # no message of its own queue's
    broker = redis.Redis.from_url(config.get_settings().broker)
    store.handed_off(run.id, 0, time.time(), ["t-handed-elsewhere"])
    broker.lpush("t-handed-elsewhere", "a message")
    try:
        lost, depths = _lost([run.id], store)
        assert lost == [] and depths["t-handed-elsewhere"] == 1
    finally:
        broker.delete("t-handed-elsewhere")
    assert _lost([run.id], store)[0] == [run.id]  # taken, never begun: lost


@component(name="t.stranded_later")
def later(data: dict) -> dict:
    return data


@component(name="t.stranded_hop")
def hop(data: dict) -> object:
    return continue_with(later.queue(ELSEWHERE), data)  # a queue its workflow does not name


ELSEWHERE = "t-stranded-elsewhere"  # no worker of the session consumes it
hopping = flowkit.Workflow("t.stranded_hopping", [hop])


def test_a_worker_records_the_queue_of_each_message_it_hands_off(worker, store):
    """The message continue_with sends goes to a queue the run's workflow does not name:
    the hand-off names it (its routing key), written in the background."""
    run = hopping.start({"n": 1})
    assert ELSEWHERE not in store.run_fields(run.id, "handoff_queues")[0].split()
    try:
        wait_until(lambda: ELSEWHERE in (store.run_fields(run.id, "handoff_queues")[0] or ""),
                   timeout=10, message="the hand-off record of the continued step")
        assert _lost([run.id], store)[0] == []  # its message waits there
    finally:
        flowkit.cancel(run.id)
        broker = redis.Redis.from_url(config.get_settings().broker)
        for key in broker.keys(f"{ELSEWHERE}*"):  # its priority lists too
            broker.delete(key)


def test_a_reaper_that_lacks_the_workflow_finds_a_new_run_s_message_in_its_queues(
        store, monkeypatch):
    """Its first message waits in a component's queue: a sweeping worker that does not
    import the workflow looked in the run's own queue only, found it empty, and restarted
    the run (a duplicate ahead of the line). The run records its queues when it is made."""
    broker = redis.Redis.from_url(config.get_settings().broker)
    run = wf.lonely.start({"n": 1})  # nobody consumes its component's queue
    monkeypatch.delitem(workflow_mod._workflows, "lonely")  # the sweeping worker lacks it
    lapse = store.settings.heartbeat_lapse
    try:
        for later in (lapse + 0.5, 2 * lapse + 1, 3 * lapse + 1.5):
            assert run.id not in reaper.sweep(time.time() + later)["restarted"]
        assert flowkit.get_run(run.id).restarts == 0
    finally:
        for key in broker.keys(f"{wf.LONELY}*"):
            broker.delete(key)


def test_a_broker_error_reply_is_not_an_empty_queue(store, monkeypatch):
    """A Redis BUSY (MASTERDOWN, NOPERM) is among kombu's channel errors: it was read as "no
    such queue", 0 messages, and every run waiting in line looked lost."""
    run = wf.simple.start({"n": 1}, delay=3600)  # no message in its queues

    def busy(self, queue, priority=None):
        raise redis.exceptions.ResponseError("BUSY Redis is busy running a script")

    assert _lost([run.id], store)[0] == [run.id]  # what the broker says: empty
    monkeypatch.setattr(kombu_redis.Channel, "_has_queue", busy)  # the broker's reply
    lost, depths = _lost([run.id], store)
    assert lost == [] and set(depths.values()) == {None}  # unknown: none is lost


def test_hand_offs_that_redis_refused_are_written_with_the_next_batch(store, monkeypatch):
    """The batch was dropped: its runs' next messages then looked unsent (orphaned), and their
    queues unknown (stranded while they waited in line)."""
    from flowkit.engine.handoff import HandOffs
    from flowkit.errors import StoreUnavailable
    from flowkit.testing import LocalRedis

    run = wf.simple.start({"n": 1}, delay=3600)
    offs = HandOffs()
    offs._pid = os.getpid()  # its writer thread not started: this test flushes
    with LocalRedis() as away:
        elsewhere = config.get_settings().replace(
            redis_url=f"redis://127.0.0.1:{away.port}/1", redis_retry_seconds=0.2)
        away.stop()
        monkeypatch.setattr(config, "_settings", elsewhere)
        offs.add(run.id, 0, "q-one")
        with pytest.raises(StoreUnavailable):
            offs.flush()
    monkeypatch.undo()
    offs.add(run.id, 0, "q-two")  # the same run's next hand-off, before the retry
    offs.flush()
    queues = store.run_fields(run.id, "handoff_queues")[0].split()
    assert {"q-one", "q-two"} <= set(queues)


def test_a_sweep_asks_the_broker_about_each_queue_once(store, monkeypatch):
    """Its passes (queued too long, stranded queued) each asked about the run's queues: a
    broker connection and a passive declare per queue and pass, four a sweep at most."""
    broker = redis.Redis.from_url(config.get_settings().broker)
    run = wf.lonely.start({"n": 1})  # its message waits where nobody consumes: not lost
    asked: list[str] = []
    looked_up = reaper.queue_depths

    def counted(queues):
        queues = list(queues)
        asked.extend(queues)
        return looked_up(queues)

    monkeypatch.setattr(reaper, "queue_depths", counted)
    settings = store.settings
    later = max(settings.queued_timeout, settings.heartbeat_lapse) + 1
    try:
        assert run.id not in reaper.sweep(time.time() + later)["restarted"]
        assert wf.LONELY in asked  # the queued passes looked for its message
        assert len(asked) == len(set(asked)), f"queues asked about twice: {sorted(asked)}"
    finally:
        flowkit.cancel(run.id)
        for key in broker.keys(f"{wf.LONELY}*"):
            broker.delete(key)
