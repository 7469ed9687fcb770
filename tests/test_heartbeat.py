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


def test_a_superseded_attempt_ending_late_leaves_the_new_attempt_s_heartbeat(monkeypatch):
    """After a restart the new attempt of a step may begin on the process where the old one
    still runs (a thread pool); the old one, ending, untracked by (run, step) and took the
    new lease's heartbeat: it lapsed, the run was reaped again, up to WorkerLost."""
    beat = Heartbeat()
    monkeypatch.setattr(beat, "beat", lambda: None)  # about the bookkeeping, not Redis
    beat.track("run-1", "0:step", "old-token")
    beat.track("run-1", "0:step", "new-token")  # the restart's attempt, same process
    beat.untrack("run-1", "0:step", "old-token")  # the superseded attempt stops
    assert beat.active() == [("run-1", "0:step", "new-token")]
    beat.untrack("run-1", "0:step", "new-token")
    assert beat.active() == [] and beat.wait_idle(0)
