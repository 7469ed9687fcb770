"""The store: the only part of flowkit that talks to Redis.

``Store`` (store.py) has a named method for every read and every transition of a run;
the transitions are Lua scripts, one file each under ``lua/`` (their KEYS and ARGV named
in a header); ``keys.py`` lays out the keys (sharded under hash tags, ready for Redis
Cluster); ``connection.py`` makes the clients. ``get_store()`` is this process's store.
"""

from __future__ import annotations

import os
import threading

from ..config import get_settings
from .store import HANDED_OVER, Begin, Store
from .streams import EndWatch, Entry, StreamReader

__all__ = ["HANDED_OVER", "Begin", "EndWatch", "Entry", "Store", "StreamReader", "get_store"]

_store: Store | None = None
_store_pid: int | None = None
_lock = threading.Lock()


def get_store() -> Store:
    """This process's store: a new one after a fork (fresh connections) and after
    ``flowkit.configure(...)`` changed the settings."""
    global _store, _store_pid
    settings = get_settings()
    current = _store
    if current is None or _store_pid != os.getpid() or current.settings is not settings:
        with _lock:
            current = _store
            if current is None or _store_pid != os.getpid() or current.settings is not settings:
                current = _store = Store(settings)
                _store_pid = os.getpid()
    return current
