"""The stream relay: one reader per web process multiplexes every subscriber of every run.

A subscriber (a WebSocket, an SSE response, a synchronous invocation) asks for a
run's events after a cursor. It first registers with the :class:`Hub`, then reads
the history after its cursor with ``XRANGE`` itself, then takes the live events
the hub hands it, dropping any whose id is not past its cursor. That cursor-based
handoff has no gap (the hub delivers everything after the stream's last id at
registration; the history read happens after registration) and no duplicate (ids
are compared with the cursor). A subscriber too slow to keep up loses its buffered
events and catches up from Redis the same way, so the hub never waits for a client.

The hub itself is one thread and one Redis connection blocked in a multi-key
``XREAD`` over the streams that have subscribers, woken through a private stream
when the set of runs changes. 1,000 clients of one run cost one ``XREAD``.

A subscriber with a :class:`Sink` (a WebSocket) is written to by the hub itself
while it is caught up and its own thread is idle: the hub hands the sink the new
events, which it writes without blocking. Waking one thread per subscriber per
event is what made fan-out slow; the subscriber's thread now only wakes to send
what its socket did not take at once, to read history, to answer its client, or to end.
The hub and the subscriber's thread never write at the same time: the hub writes only
while the thread is parked, under the subscriber's lock.

Everything between the hub's read returning and the last socket write is the relay's
own latency, paid once per event and then once per subscriber, so that path is kept
short: an event is decoded only when its text may name a terminal type, its frame is
built once, a subscriber's state is guarded by a plain lock (its condition is used only
to wake its thread), and the hub's list of a run's subscribers is rebuilt only when it
changes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .. import hooks
from ..errors import StoreUnavailable
from ..events import START, TERMINAL, stream_ends
from ..events import cursor_order as _order
from ..store import Entry, Store, StreamReader
from .errors import ApiError
from .quota import StreamQuota
from .stalls import hung_up

log = logging.getLogger(__name__)

#: How long the hub's XREAD blocks before it looks again at the set of runs.
_BLOCK_MS = 5_000
#: Longest pause after a Redis error before the hub reads again.
_MAX_BACKOFF = 2.0
#: How long a subscriber whose history read failed waits before it reads again.
CATCH_UP_RETRY_SECONDS = 0.5


class RelayEvent:
    """One stream entry, pre-encoded once for every subscriber: ``json`` is ``{"id", ...event}``;
    ``frame`` caches the WebSocket frame of that text, the same bytes for every plain socket,
    and ``sse`` / ``line`` its Server-Sent Events and NDJSON bytes."""

    __slots__ = ("id", "order", "terminal", "json", "frame", "sse", "line")

    def __init__(self, event_id: str, raw: str) -> None:
        self.id = event_id
        self.frame: bytes | None = None
        self.sse: bytes | None = None
        self.line: bytes | None = None
        self.order = _order(event_id)
        #: Only a text naming a terminal type can be one: a chunk is not decoded at all.
        self.terminal = any(name in raw for name in TERMINAL) and _type(raw) in TERMINAL
        body = raw.strip()
        self.json = f'{{"id":"{event_id}",{body[1:]}' if body not in ("{}", "") else f'{{"id":"{event_id}"}}'


def _type(raw: str) -> str:
    doc = json.loads(raw)
    return doc.get("type", "") if isinstance(doc, dict) else ""


def parse(entries: list[Entry]) -> list[RelayEvent]:
    return [RelayEvent(entry_id, raw) for entry_id, raw in entries]


class Sink(Protocol):
    """Where the hub writes a caught-up subscriber's events itself (a WebSocket)."""

    def try_send(self, events: list[RelayEvent]) -> bool:
        """Write without blocking; False when part is left for :meth:`flush`; raises if gone."""

    def flush(self) -> None:
        """Write, blocking, what :meth:`try_send` left (from the subscriber's own thread)."""


class Subscriber:
    """One client's view of one run: ``next_batch()`` returns the events after its cursor."""

    def __init__(self, hub: Hub, run_id: str, after: str, expires_at: float | None = None,
                 holder: str | None = None, connection: object = None) -> None:
        self.hub = hub
        #: Whose stream it is, counted by the hub's quota (None: not counted).
        self.holder = holder
        #: The client's socket of an HTTP stream (SSE, NDJSON, a start's ``?wait=``):
        #: looked at when its holder's quota is full (:meth:`Hub.acquire`).
        self.connection = connection
        #: When the run token that opened the stream expires (``time.time()``): the
        #: stream ends then (:attr:`expired`), as its next request would be refused.
        self.expires_at = expires_at
        self.run_id = run_id
        self.cursor = after
        self._order = _order(after)
        self._pending: deque[RelayEvent] = deque()
        #: False when the hub's read that pushed the pending events hit its count.
        self._pending_complete = True
        #: The last event delivered was terminal: the stream ends there unless more follows.
        self._delivered_terminal = False
        # The hub takes the plain lock once per event (C, no Python frame); the condition
        # over it only wakes the subscriber's thread.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._poked = False  # the client has something to say (a message, a close): look
        self._catch_up = True  # the history after the cursor comes first
        self._sink: Sink | None = None
        self._looked_at = time.monotonic()  # when vanished() last read the run's stream
        self._parked = False  # the client thread waits with nothing to do: the hub may write
        self._stalled = False  # the sink holds a remainder the client thread must flush first
        self._error: Exception | None = None  # the hub's write failed: raised in the client's thread
        self.done = False
        self.closed = False
        #: Ended because this process shuts down: the client should reconnect elsewhere.
        self.shutting_down = False
        #: The client asked to be told of the relay's outages (``?status=true``): the hub
        #: pokes it when one begins or ends, and :meth:`status` says which.
        self.wants_status = False
        self._told_outage: float | None = None  # the outage the client was last told of

    def attach(self, sink: Sink) -> None:
        """Let the hub write caught-up events straight to ``sink`` (from the client's thread)."""
        with self._lock:
            self._sink = sink

    def poke(self) -> None:
        """Wake the subscriber's thread to look at its client (from any thread): its
        :meth:`next_batch` returns at once, with what it has."""
        with self._lock:
            self._poked = True
            self._cond.notify()

    def vanished(self, every: float) -> bool:
        """Whether the run's events are gone from Redis (its retention ran out, or it was
        deleted): its stream would never end (a run token's ended with the token, an API
        key's never did). Read at most once per ``every`` seconds, on idle ticks; while
        Redis is away the run is taken to be there."""
        now = time.monotonic()
        if now - self._looked_at < every:
            return False
        self._looked_at = now
        try:
            return self.hub.last_event(self.run_id) is None
        except StoreUnavailable:
            return False

    def status(self) -> dict | None:
        """What to tell the client of the relay itself, once per change (None: nothing new):
        ``{"status": "degraded", "since": <unix time>, ...}`` when the hub cannot read Redis (the run's events
        will be late, not lost), ``{"status": "live"}`` when it reads again."""
        outage = self.hub.outage_since
        if outage == self._told_outage:
            return None
        self._told_outage = outage
        if outage is None:
            return {"status": "live"}
        return {"status": "degraded", "reason": "store_unavailable", "since": outage,
                "message": "The server cannot read this run's events from Redis: they will "
                           "arrive late, once it can again; nothing is lost."}

    # -- hub side ----------------------------------------------------------------

    def _push(self, batch: list[RelayEvent], complete: bool) -> None:
        """New events from the hub; ``complete``: its read did not stop at its count."""
        with self._lock:
            sink = self._sink
            if sink is not None and self._parked and not (
                    self._pending or self._stalled or self._catch_up or self.done):
                last = batch[-1]
                if batch[0].order > self._order and not last.terminal:
                    # The live case, once per subscriber per event: all of it is new and
                    # nothing ends the stream (what _send_direct decides, without its calls).
                    self._order, self.cursor, self._delivered_terminal = last.order, last.id, False
                    try:
                        if sink.try_send(batch):
                            return
                        self._stalled = True
                    except Exception as exc:  # the client is gone: its own thread ends
                        self._error, self._sink = exc, None
                    self._cond.notify()
                    return
                self._send_direct(batch, complete)
                return
            if len(self._pending) + len(batch) > self.hub.buffer:
                self._pending.clear()  # too slow: catch up from Redis instead
                self._catch_up = True
            else:
                self._pending.extend(batch)
                self._pending_complete = complete
            self._cond.notify()

    def _send_direct(self, batch: list[RelayEvent], complete: bool) -> None:
        """The hub's write while the client thread is parked (the caller holds the lock)."""
        fresh = self._advance(batch, complete)
        if not fresh:
            if self.done:  # the run ended at or before the cursor: the client's thread ends it
                self._cond.notify()
            return
        try:
            self._stalled = not self._sink.try_send(fresh)
        except Exception as exc:  # the client is gone; the hub goes on, the client's thread ends
            self._error, self._sink = exc, None
        if self._stalled or self._error or self.done or self._catch_up:
            self._cond.notify()

    # -- client side -------------------------------------------------------------

    def resume(self, after: str) -> None:
        """Start again after ``after`` (a client's resume message)."""
        with self._lock:
            self.cursor, self._order, self.done = after, _order(after), False
            self._pending.clear()
            self._delivered_terminal = False
            self._catch_up = True
            self._cond.notify()

    def next_batch(self, timeout: float | None) -> list[RelayEvent]:
        """Events after the cursor, oldest first; [] when ``timeout`` passes or after the end.

        With a sink attached, events the hub wrote itself are not returned (they are sent).
        A :meth:`poke` makes it return at once, and so does :attr:`expires_at`.
        """
        if self.expires_at is not None:
            left = max(0.0, self.expires_at - time.time())
            timeout = left if timeout is None else min(timeout, left)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._flush()
            if self.done:
                return []
            batch, complete, poked = self._take(deadline)
            fresh = self._advance(batch, complete)
            if fresh or poked or (deadline is not None and time.monotonic() >= deadline):
                return fresh

    @property
    def expired(self) -> bool:
        """The token that opened the stream has expired: what was read after is the next
        token's to send."""
        return self.expires_at is not None and time.time() >= self.expires_at

    def _flush(self) -> None:
        """Send what the hub's write left over (we are not parked: the hub does not write)."""
        if self._error is not None:
            raise self._error
        if self._stalled:
            self._stalled = False
            if self._sink is not None:
                self._sink.flush()

    def _take(self, deadline: float | None) -> tuple[list[RelayEvent], bool, bool]:
        """The next events: the history after the cursor, else what the hub pushed; whether
        the read that produced them reached the stream's end; whether the client was poked."""
        with self._lock:
            from_history = self._catch_up
            self._catch_up = False
            if not from_history:
                if not (self._pending or self._stalled or self._error or self.done
                        or self._poked):
                    self._parked = True
                    try:
                        self._cond.wait(
                            None if deadline is None else max(0, deadline - time.monotonic()))
                    finally:
                        self._parked = False
                batch = list(self._pending)
                self._pending.clear()
                poked, self._poked = self._poked, False
                return batch, self._pending_complete, poked
        try:
            batch = self.hub.history(self.run_id, self.cursor)
            if len(batch) >= self.hub.page:
                with self._lock:
                    self._catch_up = True  # more history to read before the live tail
                return batch, False, False
            if not batch and not self._delivered_terminal:
                # nothing after the cursor: a cursor at the run's final terminal event ends here
                last = self.hub.last_event(self.run_id)
                self._delivered_terminal = (
                    last is not None and last.terminal and last.order <= self._order)
        except StoreUnavailable:
            return [], False, self._await_redis(deadline)
        return batch, True, False

    def _await_redis(self, deadline: float | None) -> bool:
        """The history could not be read (Redis is away): the stream stays open, as it does
        when the hub's read fails, and reads it again after a pause. Whether the pause was
        cut short by a poke (the hub's word on the outage, a client's message)."""
        with self._lock:
            self._catch_up = True
            if not self._poked:
                pause = CATCH_UP_RETRY_SECONDS if deadline is None else max(
                    0.0, min(CATCH_UP_RETRY_SECONDS, deadline - time.monotonic()))
                self._cond.wait(pause)
            poked, self._poked = self._poked, False
        return poked

    def _advance(self, batch: list[RelayEvent], complete: bool) -> list[RelayEvent]:
        """Deliver the events past the cursor; the stream ends at the run's latest terminal
        event only (:func:`flowkit.events.stream_ends`)."""
        if batch and batch[0].order > self._order:
            fresh = batch  # the live case: all of it is new (the hub's batch, shared)
        else:  # some were delivered already (read from history and from the hub)
            fresh = [event for event in batch if event.order > self._order]
        if fresh:
            last = fresh[-1]
            self._order, self.cursor = last.order, last.id
            self._delivered_terminal = last.terminal
        elif batch and batch[-1].terminal:
            # the run ended at or before the cursor: one a little ahead of a live run's
            # last event (a failover's allowance) whose run ended first; nothing follows
            # (the stream waited for ever, keep-alives only)
            self._delivered_terminal = True
        if stream_ends(self._delivered_terminal, more_may_follow=not complete):
            self.done = True
        elif self._delivered_terminal:
            self._catch_up = True  # the read stopped short: the history says what follows
        return fresh

    def end(self) -> None:
        """Stop following now (the process shuts down); the client resumes from its cursor."""
        with self._lock:
            self.done = self.shutting_down = True
            self._sink = None
            self._cond.notify_all()

    def close(self) -> None:
        if not self.closed:
            with self._lock:  # the hub must not write to a socket that is being closed
                self.closed, self._sink = True, None
            self.hub.unsubscribe(self)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Tracked:
    __slots__ = ("cursor", "subscribers", "snapshot")

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        self.subscribers: set[Subscriber] = set()
        #: ``subscribers`` as the hub iterates it, rebuilt after a change (None): not per event.
        self.snapshot: tuple[Subscriber, ...] | None = None


class Hub:
    """This process's reader of run streams for one app (started on first use, per process)."""

    def __init__(self, store: Callable[[], Store], page: int, buffer: int,
                 streams_per_caller: int = 0) -> None:
        self._store_factory = store
        self.quota = StreamQuota(streams_per_caller)
        self.page = page
        self.buffer = buffer
        self._lock = threading.Condition()
        self._runs: dict[str, _Tracked] = {}
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stopped = threading.Event()
        self._reader: StreamReader | None = None
        #: This process is stopping (end_all ran): it takes no new request, so a client
        #: on a kept-alive connection goes to a process that stays.
        self.closing = False
        #: Since when (``time.time()``) the reader cannot read Redis; None while it can.
        self.outage_since: float | None = None

    @property
    def store(self) -> Store:
        return self._store_factory()

    def subscribers(self, run_id: str | None = None) -> int:
        """Clients following a stream here: of ``run_id``, or of every run."""
        with self._lock:
            if run_id is not None:
                tracked = self._runs.get(run_id)
                return len(tracked.subscribers) if tracked is not None else 0
            return sum(len(t.subscribers) for t in self._runs.values())

    # -- subscribing -------------------------------------------------------------

    def subscribe(self, run_id: str, after: str = START, expires_at: float | None = None,
                  holder: str | None = None, counted: bool = False,
                  connection: object = None) -> Subscriber:
        """``expires_at``: when the run token of the stream expires (see Subscriber);
        ``holder``: whose stream it is, refused (429) past its quota, unless ``counted``
        (acquired by the caller: the stream's end releases it); ``connection``: its
        client's socket, for :meth:`acquire`."""
        if not counted:
            self.acquire(holder)
        try:
            return self._subscribe(Subscriber(self, run_id, after, expires_at, holder,
                                              connection))
        except BaseException:
            self.quota.release(holder)
            raise

    def acquire(self, holder: str | None) -> None:
        """Count one more stream of ``holder`` (429 past its quota). At the limit, its
        streams whose clients hung up are ended first and give their slots back: an SSE
        stream learns of it at its second ping after, a ``?wait=`` start when its wait is
        over, and a page reloaded a few dozen times, or an SSE client reconnecting, locked
        the run's viewers (or a tenant) out of every stream meanwhile."""
        self._reclaiming(self.quota.acquire, holder)

    def check(self, holder: str | None) -> None:
        """Refuse as :meth:`acquire` would, counting nothing (a WebSocket's handshake),
        once the holder's streams whose clients hung up gave their slots back."""
        self._reclaiming(self.quota.check, holder)

    def _reclaiming(self, take: Callable[[str | None], None], holder: str | None) -> None:
        """``take`` (the quota's acquire or check), again once the holder's streams whose
        clients hung up were ended, when it refused at first."""
        try:
            take(holder)
        except ApiError:
            if not self._hang_up_gone(holder):
                raise
            take(holder)

    def _hang_up_gone(self, holder: str | None) -> int:
        with self._lock:
            held = [sub for tracked in self._runs.values() for sub in tracked.subscribers
                    if sub.holder == holder and sub.connection is not None]
        gone = [sub for sub in held if hung_up(sub.connection)]
        for sub in gone:
            self.unsubscribe(sub)  # its slot, now; its thread ends at its next look
            sub.end()
        return len(gone)

    def _subscribe(self, sub: Subscriber) -> Subscriber:
        self._ensure_running()
        store = self.store
        run_id = sub.run_id
        with self._lock:
            tracked = self._runs.get(run_id)
            if tracked is not None:
                tracked.subscribers.add(sub)
                tracked.snapshot = None
        if tracked is not None:
            hooks.call(hooks.stream_subscribers, 1)
            return sub
        # A new run: the hub reads everything after the stream's last id from now on.
        last = store.last_event(run_id)
        with self._lock:
            tracked = self._runs.get(run_id)
            added = tracked is None
            if added:
                tracked = self._runs[run_id] = _Tracked(last[0] if last else START)
            tracked.subscribers.add(sub)
            tracked.snapshot = None
            self._lock.notify()
        hooks.call(hooks.stream_subscribers, 1)
        if added:
            self._wake()
        return sub

    def end_all(self) -> int:
        """End every stream of this process (graceful shutdown); returns how many. From
        now on the process refuses requests (blueprint's ``_before``): a follower whose
        connection was kept alive reconnected to this process, and held its shutdown open
        for the whole graceful timeout."""
        self.closing = True
        with self._lock:
            subs = [sub for tracked in self._runs.values() for sub in tracked.subscribers]
        for sub in subs:
            sub.end()
        return len(subs)

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._lock:
            tracked = self._runs.get(sub.run_id)
            if tracked is None or sub not in tracked.subscribers:
                return
            tracked.subscribers.discard(sub)
            tracked.snapshot = None
            if not tracked.subscribers:
                del self._runs[sub.run_id]
        self.quota.release(sub.holder)
        hooks.call(hooks.stream_subscribers, -1)

    def history(self, run_id: str, after: str) -> list[RelayEvent]:
        return parse(self.store.history(run_id, after, self.page))

    def last_event(self, run_id: str) -> RelayEvent | None:
        last = self.store.last_event(run_id)
        return RelayEvent(*last) if last else None

    # -- the reader --------------------------------------------------------------

    def _wake(self) -> None:
        """Make a blocked XREAD return so it reads the new run's stream too."""
        if self._reader is not None:
            self._reader.wake()

    def _ensure_running(self) -> None:
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            if self._pid != os.getpid():  # forked: the parent's subscribers are not ours
                self._runs.clear()
            self._pid = os.getpid()
            # Its own connection: a blocked XREAD must not hold one of the request pool's.
            self._reader = self.store.stream_reader(_BLOCK_MS / 1000)
            self._stopped.clear()
            self._thread = threading.Thread(target=self._loop, name="flowkit-relay", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(StoreUnavailable):
                self._wake()
            self._thread.join(5)
        self._thread = None

    def _loop(self) -> None:
        reader = self._reader
        assert reader is not None
        backoff = 0.05
        while not self._stopped.is_set():
            with self._lock:
                while not self._runs and not self._stopped.is_set():
                    self._lock.wait()
                cursors = {run_id: t.cursor for run_id, t in self._runs.items()}
            # after an outage the first read does not block: its success is news to tell
            block_ms = _BLOCK_MS if self.outage_since is None else 1
            try:
                found = reader.read(cursors, count=self.page, block_ms=block_ms)
                backoff = 0.05
            except StoreUnavailable as exc:  # one line: a traceback per Redis restart said no more
                if self.outage_since is None:
                    log.warning("flowkit relay: reading streams failed (%s); retrying", exc)
                    self._outage(time.time())
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
                continue
            if self.outage_since is not None:
                log.warning("flowkit relay: reading streams again")
                self._outage(None)
            for run_id, entries in found.items():
                self._dispatch(run_id, entries)
        reader.close()

    def _outage(self, since: float | None) -> None:
        """An outage begins (``since``) or ends (None): wake the subscribers that asked to
        be told, their threads send :meth:`Subscriber.status`."""
        self.outage_since = since
        with self._lock:
            subs = [sub for tracked in self._runs.values() for sub in tracked.subscribers
                    if sub.wants_status]
        for sub in subs:
            sub.poke()

    def _dispatch(self, run_id: str, entries: list[Entry]) -> None:
        batch = parse(entries)
        with self._lock:
            tracked = self._runs.get(run_id)
            if tracked is None:
                return
            tracked.cursor = entries[-1][0]
            subscribers = tracked.snapshot
            if subscribers is None:
                subscribers = tracked.snapshot = tuple(tracked.subscribers)
        complete = len(entries) < self.page
        for sub in subscribers:
            sub._push(batch, complete)
