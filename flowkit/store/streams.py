"""Listening to runs: a run's end (pub/sub), and many runs' streams at once (the relay).

Both hold connections of their own while they wait, so they never pin one of the
store's pool.

On Redis Cluster one ``XREAD`` may only name streams of one slot, and a blocking read
can wait on one node only, so :class:`ClusterStreamReader` polls instead: one
non-blocking ``XREAD`` per slot (a pipeline, grouped per node by redis-py), then a short
pause that a wake-up (always from this process: the relay hub) cuts short.

:class:`StreamReader`'s reply is on the relay's latency path (from the moment Redis
answers to the moment the event is written to its subscribers' sockets), so it holds one
redis-py connection and reads the reply off it as hiredis parsed it: no pool checkout and
release, retry wrapper or per-command instrumentation around each read, and no conversion
of every entry into a dict. Its caller (the relay hub) has its own retry with backoff.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster

from ..config import Settings
from ..events import START
from ..locks import ForkSafeLock
from . import connection
from .connection import guarded
from .keys import Keys

#: A stream entry as the store returns it: (stream id, the event's JSON).
Entry = tuple[str, str]


def entries(raw: list) -> list[Entry]:
    return [(entry_id, fields["e"]) for entry_id, fields in raw]


def _pairs(flat: list | dict) -> dict[str, str]:
    """A hash as HGETALL gives it to a script (field, value, ...) as a dict; Lua's cjson
    writes an empty one as ``{}``."""
    return dict(flat) if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))


class Subscriptions:
    """Pub/sub connections, kept from one :class:`EndWatch` to the next.

    A new one is a TCP connection and its handshake (``HELLO``, ``SELECT``) before the
    ``SUBSCRIBE``, and closing it a disconnect: three times what a wait of a short run
    costs otherwise, and churn that every ``result()`` and every ``Prefer: wait`` would
    put on Redis. A watch ends with an ``UNSUBSCRIBE`` sent without waiting for its
    reply and hands its connection back; the next one reads what came meanwhile, up to
    that reply (:func:`_settled`), before it subscribes, and tells whatever comes later
    from its own end by channel.

    The connections come from a client of their own (``connect()``, made at the first
    watch): a kept connection stays checked out of its pool, and in the store's pool the
    kept ones would take the slots its commands need (FLOWKIT_CONNECTION_POOL_SIZE).
    """

    #: Idle connections kept at most (a burst of waiters opens more, closed after use).
    KEEP = 16
    #: A connection whose channels grow past this (a reconnect resubscribes those whose
    #: unsubscribing was not confirmed yet) is closed rather than kept.
    MOST_CHANNELS = 8

    def __init__(self, connect: Callable[[], redis.Redis]) -> None:
        self._connect = connect
        self._client: redis.Redis | None = None
        self._idle: list[redis.client.PubSub] = []
        self._lock = ForkSafeLock()
        self._pid = os.getpid()

    def take(self) -> redis.client.PubSub:
        while True:
            with self._lock:
                if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                    self._idle, self._pid = [], os.getpid()
                if not self._idle:
                    if self._client is None:
                        self._client = self._connect()
                    return self._client.pubsub(ignore_subscribe_messages=True)
                pubsub = self._idle.pop()
            if _settled(pubsub):
                return pubsub
            pubsub.close()

    def give_back(self, pubsub: redis.client.PubSub) -> None:
        with self._lock:
            if (self._pid == os.getpid() and len(self._idle) < self.KEEP
                    and len(pubsub.channels) <= self.MOST_CHANNELS):
                self._idle.append(pubsub)
                return
        pubsub.close()


#: How long a kept connection's next watch waits for the reply to the last watch's
#: ``UNSUBSCRIBE`` (one round trip, long come on a local Redis) before it takes a new one.
SETTLE_SECONDS = 0.05


def _settled(pubsub: redis.client.PubSub) -> bool:
    """Whether a kept connection can serve the next watch, having read what came on it up
    to the reply to its last ``UNSUBSCRIBE``. Redis sends every message of a channel before
    that reply: an end still on its way would otherwise wake a new watch of the same run
    (a restarted run's earlier end). A connection Redis closed meanwhile (an idle
    ``timeout``, a proxy) would take the next ``SUBSCRIBE`` without an error and lose it.
    Read as redis-py's ``get_message`` reads, but also once nothing is subscribed any more
    (a health check's ``PONG`` after the last reply)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    try:
        for _ in range(Subscriptions.MOST_CHANNELS * 4):
            pending = bool(pubsub.pending_unsubscribe_channels)
            wait = max(0.0, deadline - time.monotonic()) if pending else 0.0
            if not pubsub.connection.can_read(timeout=wait):
                return not pending
            pubsub.handle_message(pubsub.parse_response(block=False, timeout=0))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False
    return False  # more than its own replies keep coming: a fresh connection is cheaper


class EndWatch:
    """A subscription to one run's end; ``wait(seconds)`` returns when a message came or
    the time passed. Close it (or use it as a context manager)."""

    def __init__(self, subscriptions: Subscriptions, channel: str) -> None:
        self._subscriptions = subscriptions
        self._channel = channel
        self._pubsub = subscriptions.take()
        #: False while a read is under way or after one failed: the connection's state
        #: is then unknown, and it is closed rather than handed back.
        self._clean = False
        try:
            self._pubsub.subscribe(channel)
        except BaseException:
            self._pubsub.close()
            raise
        self._clean = True
        #: The ended run as its end's message carried it: (record, attempts per step); None
        #: until then, or from a worker whose scripts publish only the state.
        self.ended: tuple[dict[str, str], dict[str, str]] | None = None

    @guarded
    def wait(self, seconds: float) -> bool:
        # the subscription's own confirmation reads as None: it is not the end, so wait
        # on for the rest of the time (the caller would read the run again); so does what
        # is left on a kept connection from the watch before (its channel is another)
        deadline = time.monotonic() + seconds
        self._clean = False
        while (message := self._pubsub.get_message(timeout=seconds)) is None \
                or message["channel"] != self._channel:
            seconds = deadline - time.monotonic()
            if seconds <= 0:
                self._clean = True
                return False
        self._clean = True
        try:
            ended = json.loads(message["data"])
            self.ended = (_pairs(ended["record"]), _pairs(ended["attempts"]))
        except (ValueError, TypeError, KeyError):
            pass  # only the state (an older worker): the caller reads the run
        return True

    def close(self) -> None:
        if self._clean:
            try:
                self._pubsub.unsubscribe(self._channel)
            except redis.exceptions.RedisError:
                self._clean = False
        if self._clean:
            self._subscriptions.give_back(self._pubsub)
        else:
            self._pubsub.close()

    def __enter__(self) -> EndWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entries_of(raw: list) -> list[Entry]:
    """Entries of a raw ``XREAD`` reply: the event is field ``e``, an entry's only field."""
    return [(entry_id, fields[1] if fields[0] == "e"
             else dict(zip(fields[::2], fields[1::2], strict=True))["e"])
            for entry_id, fields in raw]


class StreamReader:
    """Blocking reads over many runs' streams at once, on a connection of its own, with a
    private wake stream: :meth:`wake` (from any thread) makes a blocked :meth:`read` return
    so the caller can read a new set of runs."""

    def __init__(
        self, client: redis.Redis, keys: Keys, settings: Settings, block_seconds: float
    ) -> None:
        self._client = client  # the store's pool: a wake-up is a short write
        self._keys = keys
        self._pool = connection.blocking_client(settings, block_seconds).connection_pool
        self._conn: redis.connection.AbstractConnection | None = None  # taken on the first read
        self._wake_key = keys.relay_wake(uuid.uuid4().hex)
        self._wake_cursor = START  # the wake stream is new: every entry in it is a wake-up

    @guarded
    def wake(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=16, approximate=True)
        pipe.expire(self._wake_key, 24 * 3600)
        pipe.execute()

    @guarded
    def read(self, cursors: dict[str, str], count: int, block_ms: int) -> dict[str, list[Entry]]:
        """New events of each run after its cursor ({run id: cursor}), waiting up to
        ``block_ms`` for the first; {} on a wake-up or when nothing came."""
        keys = {self._keys.events(run_id): run_id for run_id in cursors}
        streams = {key: cursors[run_id] for key, run_id in keys.items()}
        streams[self._wake_key] = self._wake_cursor
        if self._conn is None:  # (re)connects here, under the guard: StoreUnavailable
            self._conn = self._pool.get_connection()
        conn = self._conn
        try:
            conn.send_command("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS",
                              *streams.keys(), *streams.values())
            # [[key, [[id, [field, value, ...]], ...]], ...]; a map of key to entries on RESP3
            reply = conn.read_response() or ()
        except redis.ResponseError as exc:
            if not connection.unblocked(exc):
                raise
            conn.disconnect()  # its server is no longer the primary: reconnect to the new
            return {}
        except BaseException:
            conn.disconnect()  # half a reply must not be read as the next one's; reconnects
            raise
        found: dict[str, list[Entry]] = {}
        for key, raw in reply.items() if isinstance(reply, dict) else reply:
            if key == self._wake_key:
                self._wake_cursor = raw[-1][0]
            else:
                found[keys[key]] = _entries_of(raw)
        return found

    def close(self) -> None:
        self._pool.disconnect()


#: How long the Cluster reader pauses between polls when nothing came (the relay's
#: latency on a cluster).
CLUSTER_POLL_SECONDS = 0.05


class ClusterStreamReader:
    """:class:`StreamReader` for Redis Cluster: the same calls, polling per slot."""

    def __init__(self, client: RedisCluster, keys: Keys) -> None:
        self._client = client
        self._keys = keys
        self._woken = threading.Event()

    def wake(self) -> None:
        self._woken.set()

    @guarded
    def read(self, cursors: dict[str, str], count: int, block_ms: int) -> dict[str, list[Entry]]:
        """New events of each run after its cursor, polling up to ``block_ms`` for the
        first; {} on a wake-up or when nothing came."""
        keys = {self._keys.events(run_id): run_id for run_id in cursors}
        by_slot: dict[int, dict[str, str]] = {}
        for key, run_id in keys.items():
            by_slot.setdefault(self._client.keyslot(key), {})[key] = cursors[run_id]
        deadline = time.monotonic() + block_ms / 1000
        while True:
            pipe = self._client.pipeline(transaction=False)
            for streams in by_slot.values():
                pipe.xread(streams, count=count)
            found = {keys[key]: entries(raw)
                     for reply in pipe.execute() for key, raw in (reply or ())}
            left = deadline - time.monotonic()
            if found or left <= 0:
                return found
            if self._woken.wait(min(CLUSTER_POLL_SECONDS, left)):
                self._woken.clear()
                return {}

    def close(self) -> None:
        pass
