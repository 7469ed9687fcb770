"""Locks that a forked child gets free.

Why: a worker's main process forks its pool's children (at start, then again for each
child it replaces: ``--max-tasks-per-child``, a child that died) while its own threads run:
the heartbeat thread, Sentinel's watch, the trace writer. ``fork`` copies a lock but not the
thread that holds it, so a ``threading.Lock`` one of those held at that instant stayed held
for ever in the child: the child's first step that needed it hung, and took its pool slot
with it. Python gives its own locks back after a fork (``threading``, ``logging``); these are
flowkit's. Each lock guards state that is valid in the child (or that the child resets as
it adopts it, :mod:`flowkit.engine.heartbeat`), so a child only needs the lock free.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any


class ForkSafeLock:
    """A ``threading.Lock`` that is replaced by a free one in a forked child; usable
    wherever a Lock is (``with``, ``acquire``/``release``, ``threading.Condition``)."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _locks.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


_locks: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _free_in_child() -> None:
    for lock in list(_locks):
        lock._lock = threading.Lock()


os.register_at_fork(after_in_child=_free_in_child)
