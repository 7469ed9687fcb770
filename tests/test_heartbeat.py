"""The heartbeat thread of a worker process (unit tests: no Redis reached)."""

from __future__ import annotations

import threading

from flowkit.engine.heartbeat import Heartbeat


def test_steps_starting_at_once_share_one_heartbeat_thread(monkeypatch):
    beats = Heartbeat()
    monkeypatch.setattr(beats, "beat", lambda: None)  # this test is about threads, not Redis
    before = set(threading.enumerate())
    start = threading.Barrier(50)

    def step(i: int) -> None:
        start.wait()
        beats.track("run", f"{i}:step", "token")

    steps = [threading.Thread(target=step, args=(i,)) for i in range(50)]
    for t in steps:
        t.start()
    for t in steps:
        t.join()
    started = [t for t in set(threading.enumerate()) - before if t.name == "flowkit-heartbeat"]
    assert len(started) == 1
    assert len(beats.active()) == 50
