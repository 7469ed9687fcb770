"""Hand-offs: which runs' next messages reached the broker, written in the background.

A worker records each message of a run it publishes (Celery's ``after_task_publish``), so
the reaper does not take a run whose next step waits in the queue for one whose worker was
lost between steps (restart.lua's ORPHANED), and the queue it went to, where the reaper looks
before it takes a run for stranded (a step reached by ``continue_with``, a workflow the
sweeping worker does not import). The record is not on the step's path: it is
written by a thread of this process, many in one round trip under load. A worker that
dies before it is written leaves it unwritten; the reaper may then restart that run, which
resumes at its frontier: nothing runs twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from ..locks import ForkSafeLock
from ..store import get_store

log = logging.getLogger(__name__)
#: Pause before writing what waits: 0, the writer thread takes whatever piled up meanwhile
#: (under load, many hand-offs share one round trip; idle, each goes at once).
FLUSH_SECONDS = 0.0
#: Pause before writing again what Redis refused, doubled up to MAX_RETRY_SECONDS.
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


class HandOffs:
    def __init__(self) -> None:
        #: run id -> (gen, when, the queues its messages went to)
        self._pending: dict[str, tuple[int, float, set[str]]] = {}
        self._lock = ForkSafeLock()
        self._wake = threading.Event()
        self._pid = 0

    def add(self, run_id: str, gen: int, queue: str | None = None) -> None:
        with self._lock:
            pending = self._pending.get(run_id)
            queues = pending[2] if pending is not None and pending[0] == gen else set()
            if queue:
                queues.add(queue)
            self._pending[run_id] = (gen, time.time(), queues)
            start = self._pid != os.getpid()  # the first in this process (or after a fork)
            self._pid = os.getpid()
        if start:
            threading.Thread(target=self._loop, name="flowkit-handoff", daemon=True).start()
        self._wake.set()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            get_store().handed_off_many([(run, *record) for run, record in batch.items()])
        except Exception:
            with self._lock:  # written with the next batch (a later generation's wins)
                for run_id, (gen, at, queues) in batch.items():
                    newer = self._pending.get(run_id)
                    if newer is None or newer[0] < gen:
                        self._pending[run_id] = (gen, at, queues)
                    elif newer[0] == gen:
                        newer[2].update(queues)
            raise

    def _loop(self) -> None:
        pid, pause = os.getpid(), RETRY_SECONDS
        while self._pid == pid:
            self._wake.wait()
            self._wake.clear()
            if FLUSH_SECONDS:
                time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except Exception as exc:  # the thread must live on: none would write them
                if pause == RETRY_SECONDS:  # once per failing spell
                    log.warning("flowkit: could not record hand-offs (%s); retrying", exc)
                time.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_SECONDS)
                self._wake.set()
            else:
                pause = RETRY_SECONDS


handoffs = HandOffs()
