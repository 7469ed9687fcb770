"""flowkit.engine.consumers: which workers the reaper reports as taking nothing, and how the
finding is kept (the real worker and reaper: tests/chaos/test_lost_message.py)."""

from __future__ import annotations

from flowkit.engine import consumers

NOW = 1_000.0


def worker(**load) -> dict:
    return {"name": "w@h", "queues": ["q", "other"], "concurrency": 4, "held": 0,
            "received_at": NOW - 600, "saturated_at": NOW - 600, **load}


def test_a_free_worker_quiet_for_the_timeout_beside_waiting_messages_is_reported():
    [found] = consumers.stuck([worker()], {"q": 3, "other": 0}, NOW, 300)
    assert found == {"worker": "w@h", "queues": {"q": 3}, "free": 4, "quiet": 600.0}
    said = consumers.describe(found)
    assert "w@h has 4 free slot(s)" in said and "q (3 waiting)" in said
    assert said.endswith("restart the worker")


def test_workers_with_a_reason_to_take_nothing_are_not_reported():
    depths = {"q": 3}
    assert consumers.stuck([worker(held=4)], depths, NOW, 300) == []  # full
    assert consumers.stuck([worker(draining=True)], depths, NOW, 300) == []
    assert consumers.stuck([worker(received_at=NOW - 10)], depths, NOW, 300) == []  # took one
    assert consumers.stuck([worker(saturated_at=NOW - 10)], depths, NOW, 300) == []  # was full
    assert consumers.stuck([worker()], {"q": 0, "other": 0}, NOW, 300) == []  # nothing waits
    assert consumers.stuck([worker(queues=["elsewhere"])], depths, NOW, 300) == []
    older = {k: v for k, v in worker().items() if k not in ("held", "received_at")}
    assert consumers.stuck([older], depths, NOW, 300) == []  # sends no load: says nothing


def test_the_finding_is_kept_for_a_while_and_cleared_when_none_is_found(store):
    found = consumers.stuck([worker()], {"q": 1}, NOW, 300)
    consumers.record(store, found)
    assert store.stuck_consumers() == found
    assert consumers.reported(store) == [consumers.describe(found[0])]
    ttl = store.redis.pttl(store.keys.stuck)
    assert 0 < ttl <= 30_000  # a reaper that stopped looking leaves no stale alarm
    consumers.record(store, [])
    assert store.stuck_consumers() == [] and not store.redis.exists(store.keys.stuck)
