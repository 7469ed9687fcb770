"""Where the reaper looks for a run's messages before it takes the run for stranded (the
crashes themselves: tests/chaos/test_between_steps.py): the queues its messages were
recorded going to count, not only its own and its workflow's (a step reached by
continue_with, a workflow the sweeping worker does not import)."""

from __future__ import annotations

import time

import redis

from flowkit import config
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


def test_a_worker_records_the_queue_of_each_message_it_hands_off(worker, store):
    """A fan-out's items are messages the worker sends (after_task_publish): each hand-off
    names the queue it went to (its routing key), written in the background."""
    run = wf.fanned.start({"n": 3})
    assert run.result(30) is not None
    wait_until(lambda: store.run_fields(run.id, "handoff_queues")[0] is not None, timeout=10,
               message="the hand-off record")
    assert store.run_fields(run.id, "handoff_queues")[0].split() == ["flowkit"]
