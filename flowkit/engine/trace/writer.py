"""Writing trace records in batches (group commit, one round trip per batch and store).

A running attempt's records (its opening record, its calls) wait at most
``TRACE_FLUSH_SECONDS``; an attempt's closing record is written, with everything
waiting, with the step's checkpoint (:func:`flush_with`), so a finished step's trace
is complete before its checkpoint is. A thousand concurrent LLM steps in one worker
then cost a few trace writes a second, not three round trips each. A process that
dies loses at most its last ``TRACE_FLUSH_SECONDS`` of records.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from ...config import get_settings
from ...store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A record waiting: (its store, run id, span JSON).
_Pending = tuple[Store, str, str]


class Writer:
    """Trace records of this process waiting to be written, flushed in order in batches.

    Each record gets a sequence number; ``flush(upto)`` returns once every record up
    to it is written. One batch is in flight at a time (so records reach each run's
    stream in the order they were made), and whoever flushes takes everything waiting:
    concurrent closing records share one round trip.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards pending and seq
        self.flushing = threading.Lock()  # one batch in flight
        self.pending: list[_Pending] = []
        self.seq = 0
        self.written = 0
        self.wake = threading.Event()
        self.pid = 0

    def add(self, store: Store, run_id: str, doc: str) -> int:
        with self.lock:
            self.pending.append((store, run_id, doc))
            self.seq += 1
            seq = self.seq
            start = self.pid != os.getpid()  # first record in this process (or after a fork)
            self.pid = os.getpid()
        if start:
            threading.Thread(target=self._background, name="flowkit-trace", daemon=True).start()
        self.wake.set()
        return seq

    def flush(self, upto: int | None = None) -> None:
        """Write what waits, in order (``upto``: return early once that record is written)."""
        with self.flushing:
            with self.lock:
                if upto is not None and self.written >= upto:
                    return  # another flush wrote it while we waited
                batch, self.pending = self.pending, []
                last = self.seq
            try:
                for store, records in _by_store(batch):
                    store.append_trace(records)
            finally:
                self.written = last

    def flush_with(self, store: Store, write: Callable[[list[tuple[str, str]]], T]) -> T:
        """Write what waits; ``store``'s records through ``write(records)``, which writes
        them with its own commands in one round trip; returns what ``write`` returns."""
        with self.flushing:
            with self.lock:
                batch, self.pending = self.pending, []
                last = self.seq
            try:
                mine: list[tuple[str, str]] = []
                for other, records in _by_store(batch):
                    if other is store:
                        mine = records
                    else:
                        other.append_trace(records)
                return write(mine)
            finally:
                self.written = last

    def _background(self) -> None:
        pid = os.getpid()
        while self.pid == pid:
            self.wake.wait()
            self.wake.clear()
            time.sleep(get_settings().trace_flush_seconds)
            try:
                self.flush()
            except Exception:  # observability must never take the worker down
                log.exception("flowkit: could not write trace records")


def _by_store(batch: list[_Pending]) -> list[tuple[Store, list[tuple[str, str]]]]:
    grouped: dict[int, tuple[Store, list[tuple[str, str]]]] = {}
    for store, run_id, doc in batch:
        grouped.setdefault(id(store), (store, []))[1].append((run_id, doc))
    return list(grouped.values())


writer = Writer()
