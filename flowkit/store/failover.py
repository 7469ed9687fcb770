"""Following a Sentinel failover as soon as the sentinels announce it.

A failover the sentinels run (``SENTINEL FAILOVER``, or a primary found down) does not
pause the old primary: while clients reach it, it takes writes until the sentinels demote
it, seconds after they promoted its replica, and drops them then. redis-py asks the
sentinels for the primary only when it opens a connection, so a pool kept using the old
primary for those seconds and lost every write of them (``start()`` returned the ids of
runs that were then not found).

So each process that uses a ``redis+sentinel://`` store listens on the sentinels'
``+switch-master`` channel, one thread per sentinel deployment and service, as ioredis's
``failoverDetector`` does. At a switch of the service it asks the sentinel that announced
it for the primary (that sentinel first: another may not know yet); each pool then closes
its idle connections and drops each busy one when it is given back (redis-py's
``SentinelConnectionPool.owns_connection``), so the next command reaches the new primary.
What is left is the time the sentinels take to see the promotion they made (they read the
replica's ``INFO``, about a second), and a command already in flight on the old primary.

The thread starts with the first connection a process opens (so a forked worker child has
its own) and subscribes again, to the next sentinel, when its sentinel goes away or stops
answering its pings (a frozen or cut-off sentinel leaves its socket open: the thread heard
no switch of the others); at each subscription it asks for the primary once, in case a
switch came while nobody listened.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import redis
from redis.sentinel import MasterNotFoundError, Sentinel

from ..locks import ForkSafeLock

log = logging.getLogger(__name__)

#: The sentinels' channel announcing a new primary:
#: ``<service> <old ip> <old port> <new ip> <new port>``.
SWITCH_CHANNEL = "+switch-master"
#: Seconds between two looks for a message; a pause between sentinels that all failed.
POLL_SECONDS = 1.0
#: A sentinel listened to is pinged this often; silent for twice this, the next one is.
PING_SECONDS = 5.0


class SwitchWatch:
    """The ``+switch-master`` listener of one sentinel deployment and service in this
    process, and the pools it re-points."""

    def __init__(self, sentinels: Sentinel, service: str) -> None:
        self.sentinels = sentinels
        self.service = service
        self.pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = ForkSafeLock()
        self._pid: int | None = None

    def add(self, pool: Any) -> None:
        """Re-point ``pool`` (a ``SentinelConnectionPool`` of this service) at switches."""
        with self._lock:
            self.pools.add(pool)

    def ensure_running(self) -> None:
        """Start the listening thread, once per process (a fork's child starts its own)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self._listen, name=f"flowkit-sentinel-{self.service}",
                         daemon=True).start()

    def _listen(self) -> None:
        while True:
            for sentinel in list(self.sentinels.sentinels):
                try:
                    self._follow(sentinel)
                except (redis.RedisError, OSError) as exc:
                    log.debug("flowkit: sentinel %s stopped answering (%s)", sentinel, exc)
            time.sleep(POLL_SECONDS)

    def _follow(self, sentinel: redis.Redis) -> None:
        pubsub = sentinel.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(SWITCH_CHANNEL)
            self.switched(None)  # a switch may have come while nobody listened
            heard = pinged = time.monotonic()
            while True:
                message = pubsub.get_message(timeout=POLL_SECONDS)
                now = time.monotonic()
                if message is not None:
                    heard = now
                if now - heard > 2 * PING_SECONDS:  # frozen or cut off, its socket still
                    # open: nothing would ever say so, and the others' switches went unheard
                    raise redis.ConnectionError(f"no answer for {now - heard:.0f}s")
                if now - pinged >= PING_SECONDS:
                    pubsub.ping()  # its answer (a "pong" message) counts as hearing from it
                    pinged = now
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"]
                words = (data.decode() if isinstance(data, bytes) else str(data)).split()
                if words and words[0] == self.service:
                    log.info("flowkit: the sentinels switched the primary of %s to %s",
                             self.service, " ".join(words[3:5]))
                    self.switched(sentinel)
        finally:
            pubsub.close()

    def switched(self, announcer: redis.Redis | None) -> None:
        """Ask for the primary again, ``announcer`` first (it knows; another sentinel may
        not yet), and re-point every pool at it: redis-py closes a pool's idle connections
        when the address changes and drops a busy one when it is given back."""
        for pool in list(self.pools):
            if announcer is not None:
                _ask_first(pool.sentinel_manager, _address(announcer))
            try:
                pool.get_master_address()
            except MasterNotFoundError:
                return  # the failover is not over: the next connection asks again


def _address(client: redis.Redis) -> tuple[Any, Any]:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs.get("host"), kwargs.get("port")


def _ask_first(manager: Sentinel, address: tuple[Any, Any]) -> None:
    """Put the sentinel at ``address`` first: redis-py's ``discover_master`` asks them in
    order. A new list, given in one assignment: swapping two items in place beside
    ``discover_master``'s own swap (another thread's) could lose one of them."""
    listed = list(manager.sentinels)
    first = [s for s in listed if _address(s) == address]
    if first:
        manager.sentinels = first + [s for s in listed if s is not first[0]]


_watches: dict[tuple[Any, ...], SwitchWatch] = {}
_watches_lock = ForkSafeLock()


def watch(key: tuple[Any, ...], sentinels: Sentinel, service: str, pool: Any) -> SwitchWatch:
    """The process's watch of the deployment ``key`` (its hosts, service and credentials),
    made on first use, with ``pool`` added to what it re-points."""
    with _watches_lock:
        found = _watches.get(key)
        if found is None:
            found = _watches[key] = SwitchWatch(sentinels, service)
    found.add(pool)
    return found
