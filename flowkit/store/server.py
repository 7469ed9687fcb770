"""What a Redis server says of itself: version, persistence and eviction, for ``flowkit doctor``.

Read from ``INFO`` rather than ``CONFIG GET``: managed Redis services (ElastiCache,
Memorystore, ...) often disable ``CONFIG`` but always answer ``INFO``, which carries
``aof_enabled`` and ``maxmemory_policy`` too. ``probe`` reads a server flowkit's store does
not use itself (the Celery broker's, when it is another Redis).
"""

from __future__ import annotations

from typing import Any

import redis

from ..errors import StoreUnavailable
from .connection import REFUSED, UNREACHABLE, from_url, refused


def describe(client: redis.Redis) -> dict[str, Any]:
    """``version``, ``aof_enabled``, ``aof_last_write_status``, ``maxmemory`` (bytes, 0: no
    limit) and ``maxmemory_policy`` of the server ``client`` talks to."""
    info = client.info()
    return {
        "version": info.get("redis_version"),
        "aof_enabled": bool(int(info.get("aof_enabled", 0))),
        "aof_last_write_status": info.get("aof_last_write_status"),
        "maxmemory": int(info.get("maxmemory", 0) or 0),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }


def probe(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """:func:`describe` the Redis at ``url`` over a connection of its own (then closed), at
    once: StoreUnavailable when it does not answer within ``timeout`` seconds, ConfigError
    when it refuses the credentials."""
    client = from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                      decode_responses=True)
    try:
        return describe(client)
    except REFUSED as exc:  # before UNREACHABLE: redis-py files it under ConnectionError
        raise refused(exc) from exc
    except UNREACHABLE as exc:
        raise StoreUnavailable(f"Redis at {url} is unreachable: {exc}") from exc
    finally:
        client.close()
