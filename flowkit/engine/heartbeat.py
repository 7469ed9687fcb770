"""Heartbeats: what each worker process holds, and its presence, kept alive in Redis.

The leases of running steps (and the component slots they hold) are beaten by the worker's
lease keeper (:mod:`flowkit.engine.keeper`), a process of its own, so a step that holds
the GIL past the lapse (or, on gevent, never yields) keeps its lease; each process tells it
what it holds (:class:`Heartbeat` ``track``, ``untrack``, ``hold``, ``let_go``). One daemon
thread per process beats the worker's presence and its node's record, and beats the
leases itself until the keeper beats (or after it exited, or with
``FLOWKIT_HEARTBEAT_KEEPER=false``): the reaper only acts when the whole process is gone or
stopped.

Only the process that announced the node (its main process, :func:`announce`) sends the
node's record with its beats: a prefork child forked after the worker was ready (one
replacing a child that reached ``--max-tasks-per-child`` or ``--max-memory-per-child``, or
died) inherits ``node_info`` and ``node_load``, and its beats overwrote the record with the
load as it was at its fork (messages held, last taken) every interval: a busy worker was
reported as a stuck consumer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from ..config import get_settings
from ..errors import FlowkitError
from ..locks import ForkSafeLock
from ..store import get_store
from .keeper import Link

log = logging.getLogger(__name__)

#: This worker's node name (Celery's ``celery@host``), set when the worker starts.
node_name: str = f"flowkit@{socket.gethostname()}"


def worker_id() -> str:
    return f"{node_name}:{os.getpid()}"


def this_node() -> str:
    """This worker's node name (as its announcement names it)."""
    return node_name


class Heartbeat:
    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], str] = {}
        #: (group, member) of the component slots its steps hold (engine.limits).
        self._slots: set[tuple[str, str]] = set()
        self._lock = ForkSafeLock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._wake = threading.Event()
        #: What this node announced when ready (set in its main process only; a prefork
        #: child forked later inherits a copy, which its beats do not send).
        self.node_info: dict | None = None
        #: Its load now, sent with each beat beside node_info (flowkit.worker.load).
        self.node_load: Callable[[], dict] | None = None
        #: This process's side of its worker's lease keeper (engine.keeper).
        self.link = Link()

    def track(self, run_id: str, step: str, token: str) -> None:
        with self._lock:
            self._adopt()
            self._entries[(run_id, step)] = token
            self.link.send(["+", self._pid, worker_id(), run_id, step, token])
        self.ensure_running()

    def _adopt(self) -> None:
        """In a forked child (its lock held): the parent's steps and thread are not ours."""
        if self._pid != os.getpid():
            self._entries.clear()
            self._slots.clear()
            self._pid, self._thread = os.getpid(), None

    def untrack(self, run_id: str, step: str, token: str) -> None:
        """Stop beating for this attempt's lease; not for a later attempt of the same step
        on this process (a superseded attempt that ends late, after a restart's new one
        began here, took the new lease's heartbeat with it: it lapsed, and was reaped)."""
        with self._lock:
            if self._entries.get((run_id, step)) == token:
                del self._entries[(run_id, step)]
                self.link.send(["-", self._pid, run_id, step, token])
            if not self._entries:
                self._idle.notify_all()

    def hold(self, group: str, member: str) -> None:
        """Keep a component slot with the step's lease (a dead worker's lapses with it)."""
        with self._lock:
            self._slots.add((group, member))
            self.link.send(["hold", self._pid, group, member])

    def let_go(self, group: str, member: str) -> None:
        with self._lock:
            self._slots.discard((group, member))
            self.link.send(["let_go", self._pid, group, member])

    def _held(self) -> list[list]:
        """What this process holds, as messages to a keeper that starts (its lock held)."""
        worker = worker_id()
        return [["+", self._pid, worker, run, step, token]
                for (run, step), token in self._entries.items()] + \
            [["hold", self._pid, group, member] for group, member in self._slots]

    def start_keeper(self) -> None:
        """Start this worker's lease keeper (:mod:`flowkit.engine.keeper`), once: called
        by a worker's main process before its pool forks, and by the heartbeat thread of a
        process that has none yet."""
        with self._lock:
            self._adopt()
            if not self.link.started() and get_settings().heartbeat_keeper:
                self.link.start(get_settings(), self._held())

    def wait_idle(self, timeout: float) -> bool:
        """Block until no step of this process is running (True) or ``timeout`` s pass (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._entries, timeout)

    def active(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return [(run, step, token) for (run, step), token in self._entries.items()]

    def _running(self) -> bool:
        return self._thread is not None and self._pid == os.getpid() and self._thread.is_alive()

    def ensure_running(self) -> None:
        if self._running():
            return
        with self._lock:
            if self._running():  # another step started it while this one waited for the lock
                return
            # a prefork child starts its thread as it starts, then tracks its first step: not
            # adopted here, that track took the thread for the parent's and started another
            self._adopt()
            self._thread = threading.Thread(target=self._loop, name="flowkit-heartbeat", daemon=True)
            self._thread.start()

    def beat(self) -> None:
        if not self.link.started() and (self._entries or self._slots):
            self.start_keeper()
        with self._lock:
            held = self._held()
            self.link.check(get_settings(), held)
            self.link.tick(self._pid, held)
        store, now = get_store(), time.time()
        keeper = self.link.beating()  # else this thread beats the leases, as it did before
        node = None
        # a child forked after the announce has a frozen copy of the node's load: not its to send
        if self.node_info and self.node_info.get("pid") == os.getpid():
            node = (node_name, {**self.node_info, **self.node_load()} if self.node_load
                    else self.node_info)
        store.heartbeat([] if keeper else self.active(), worker_id(), now, node=node)
        with self._lock:
            slots = [] if keeper else list(self._slots)
        if slots:
            store.hold_slots(slots, now + get_settings().heartbeat_lapse)

    def wake(self) -> None:
        """Beat now rather than at the next interval."""
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self.beat_or_say()
            self._wake.wait(get_settings().heartbeat_interval)
            self._wake.clear()

    def beat_or_say(self) -> None:
        """:meth:`beat`; on failure a warning (Redis away: the next beat tries again, and
        the reaper judges lapses). flowkit's own errors (an outage, a setting) in their one
        line: a traceback at each beat buried what it said (no primary of that service)."""
        try:
            self.beat()
        except FlowkitError as exc:
            log.warning("flowkit heartbeat failed: %s", exc)
        except Exception:
            log.warning("flowkit heartbeat failed", exc_info=True)


heartbeat = Heartbeat()


def announce(info: dict) -> None:
    """This worker node is ready: what it consumes (queues, pool, concurrency) goes out with
    each of its heartbeats (so it is back soon after Redis lost it)."""
    heartbeat.node_info = {**info, "pid": os.getpid()}
    heartbeat.wake()
