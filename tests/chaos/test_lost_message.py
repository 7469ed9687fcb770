"""A run whose message was lost before any worker took it: the reaper enqueues it again."""

from __future__ import annotations

import redis

from flowkit import config
from flowkit.engine.broker import PRIORITY_STEPS
from tests.chaos.conftest import of_type, side_effects
from tests.chaos.workflows import QUEUE, handoff


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
