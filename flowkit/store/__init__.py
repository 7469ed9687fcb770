"""The store: the only part of flowkit that talks to Redis.

``Store`` (store.py) has a named method for every read and every transition of a run;
the transitions are Lua scripts, one file each under ``lua/`` (their KEYS and ARGV named
in a header); ``keys.py`` lays out the keys (sharded under hash tags, ready for Redis
Cluster); ``connection.py`` makes the clients. ``get_store()`` is this process's store.
"""

from __future__ import annotations

import os

from ..config import get_settings
from ..locks import ForkSafeLock
from .connection import (
    DEMOTED,
    database_out_of_range,
    demoted,
    is_redis_url,
    lost_connection,
    no_primary,
    refused_credentials,
    refused_database,
    said_no_primary,
    sentinels_refused,
)
from .store import HANDED_OVER, SPENT, Begin, BrokerMessages, Ended, Store
from .streams import EndWatch, Entry, StreamReader

__all__ = ["DEMOTED", "HANDED_OVER", "SPENT", "Begin", "BrokerMessages", "EndWatch", "Ended", "Entry", "Store", "StreamReader", "demoted", "get_store",
           "is_redis_url", "lost_connection", "no_primary", "refused_credentials", "sentinels_refused",
           "refused_database", "said_no_primary", "database_out_of_range"]

_stores: dict[float | None, Store] = {}
_made_for: tuple[int, object] | None = None
_lock = ForkSafeLock()


def get_store(retry_seconds: float | None = None) -> Store:
    """This process's store: a new one after a fork (fresh connections) and after
    ``flowkit.configure(...)`` changed the settings.

    ``retry_seconds``: a store of its own that gives up on an unreachable Redis after that
    many seconds instead of FLOWKIT_REDIS_RETRY_SECONDS (the API answers 503 quickly while
    workers ride out a Redis restart).
    """
    global _made_for
    settings = get_settings()
    made_for = (os.getpid(), settings)
    store = _stores.get(retry_seconds) if _made_for == made_for else None
    if store is None:
        with _lock:
            if _made_for != made_for:
                _stores.clear()
                _made_for = made_for
            store = _stores.get(retry_seconds)
            if store is None:
                own = settings if retry_seconds is None else settings.replace(
                    redis_retry_seconds=retry_seconds)
                store = _stores[retry_seconds] = Store(own)
    return store
