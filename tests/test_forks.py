"""A lock that another thread held when the process forked is free in the child.

A worker's main process forks pool children (at start, and for each child it replaces:
``--max-tasks-per-child``) while its heartbeat thread runs; the child inherited a held lock
and its first step hung on it, with its pool slot. Each case holds the lock in a thread of
this process, forks, and has the child take it through the code that needs it."""

from __future__ import annotations

import os
import signal
import threading

from flowkit import store as store_module
from flowkit.engine import heartbeat as hb
from flowkit.locks import ForkSafeLock


def held_while_forking(lock, in_child) -> int:
    """Fork while a thread holds ``lock``; the child's exit code: 0 when ``in_child()``
    returned, 3 when it hung (SIGALRM after 5 s), 4 when it raised."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert taken.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 4
        try:
            signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
            signal.alarm(5)
            in_child()
            code = 0
        finally:
            os._exit(code)
    done.set()
    holder.join(5)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_lock_held_at_fork_is_free_in_the_child_and_a_condition_on_it_works():
    lock = ForkSafeLock()
    idle = threading.Condition(lock)

    def in_child() -> None:
        with idle:
            idle.notify_all()
            assert not idle.wait_for(lambda: False, 0.01)

    assert held_while_forking(lock, in_child) == 0
    assert not lock.locked()  # the parent's own was released by its holder


def test_the_heartbeat_s_lock_held_by_the_parent_s_beat_does_not_hang_the_child():
    """The parent's heartbeat thread holds it for each beat."""
    assert held_while_forking(hb.heartbeat._lock, hb.heartbeat.active) == 0


def test_the_store_s_lock_held_at_fork_does_not_hang_the_child_s_first_store(store):
    """A forked child makes its own store (its pid differs) under the lock."""
    assert held_while_forking(store_module._lock, store_module.get_store) == 0
