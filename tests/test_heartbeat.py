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


CHILD = """
import os, threading, sys
from flowkit.engine.heartbeat import Heartbeat
beats = Heartbeat()
beats.beat = lambda: None  # about threads, not Redis
beats.ensure_running()  # the worker's main process
pid = os.fork()
if pid == 0:  # a prefork child: started as the pool forks it, then its first step
    beats.ensure_running()
    beats.track("run", "0:step", "token")
    alive = [t for t in threading.enumerate() if t.name == "flowkit-heartbeat"]
    os._exit(len(alive))
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_that_starts_its_thread_then_tracks_a_step_has_one_thread():
    """A prefork child started its heartbeat thread as it started (worker_process_init),
    then its first step took that thread for the parent's and started a second: every
    lease of the child was renewed twice an interval, for good."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, timeout=60)
    assert child.returncode == 1, child.stderr


def test_a_beat_that_meets_an_unreachable_redis_says_so_in_one_line(monkeypatch, caplog):
    """It logged a traceback at each beat, which buried what flowkit's error said."""
    import logging  # noqa: PLC0415
    import os  # noqa: PLC0415

    from flowkit import config  # noqa: PLC0415
    from flowkit.testing import free_port  # noqa: PLC0415

    monkeypatch.setattr(config, "_settings", config.get_settings().replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retry_seconds=0.2))
    beating = Heartbeat()  # its thread not started: this test beats alone
    beating.node_info = {"pid": os.getpid(), "queues": ["flowkit"]}  # a node: it writes
    with caplog.at_level(logging.WARNING, logger="flowkit.engine.heartbeat"):
        beating.beat_or_say()
    [record] = [r for r in caplog.records if r.name == "flowkit.engine.heartbeat"]
    assert record.getMessage().startswith("flowkit heartbeat failed: flowkit's Redis is "
                                          "unreachable: ")
    assert record.exc_info is None
