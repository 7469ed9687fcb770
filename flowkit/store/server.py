"""What a Redis server says of itself: version, persistence and eviction, for ``flowkit doctor``.

Read from ``INFO`` rather than ``CONFIG GET``: managed Redis services (ElastiCache,
Memorystore, ...) often disable ``CONFIG`` but always answer ``INFO``, which carries
``aof_enabled`` and ``maxmemory_policy`` too. ``probe`` reads a server flowkit's store does
not use itself (the Celery broker's, when it is another Redis).

On Redis Cluster every primary holds part of the runs, so each node is read (its
replicas too, the next failover's primaries) and the weakest answer stands (on Sentinel,
the primary and each replica the sentinels list): AOF counts as on only when every primary has it, a failed write
on any primary is reported, and the smallest memory limit and any evicting policy win.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

from ..errors import ConfigError, StoreUnavailable
from ..urls import redacted
from .connection import (
    NOT_REDIS,
    REFUSED,
    UNREACHABLE,
    database_out_of_range,
    from_url,
    not_redis,
    refused,
    refused_database,
)


def describe(client: redis.Redis) -> dict[str, Any]:
    """``version``, ``aof_enabled``, ``aof_last_write_status``, ``maxmemory`` (bytes, 0: no
    limit) and ``maxmemory_policy`` of the server ``client`` talks to (on a cluster, the
    weakest of its primaries)."""
    if isinstance(client, RedisCluster):  # its replicas too: each is a primary after a failover
        return {**_weakest([_described(info, node) for node, info in
                            client.info(target_nodes=RedisCluster.ALL_NODES).items()]),
                **cluster_health(client.cluster_nodes())}
    primary = _described(client.info())
    pool = client.connection_pool
    sentinels = getattr(pool, "sentinel_manager", None)
    if sentinels is None:
        return primary
    replicas = [_replica(host, port, pool.connection_kwargs)
                for host, port in sentinels.discover_slaves(pool.service_name)]
    return _weakest([primary, *[r for r in replicas if r is not None]])


def cluster_health(nodes: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """From ``CLUSTER NODES`` (redis-py's parse, by ``host:port``): ``failed_nodes``, those
    the cluster marked failed (``fail``: down or cut off, past cluster-node-timeout), and
    ``lone_primaries``, the primaries serving slots with no replica left that is not
    failed: their crash stops the runs in their slots. After a failover every answering
    node was read, the failed one was not, and the doctor said "All is well"."""
    def flags(node: dict[str, Any]) -> list[str]:
        return node["flags"].split(",")

    failed = {addr for addr, node in nodes.items() if "fail" in flags(node)}
    backed = {node["master_id"] for addr, node in nodes.items()
              if "slave" in flags(node) and addr not in failed}
    lone = [addr for addr, node in nodes.items() if "master" in flags(node)
            and node["slots"] and addr not in failed and node["node_id"] not in backed]
    return {"failed_nodes": sorted(failed), "lone_primaries": sorted(lone)}


def _replica(host: str, port: int, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """A Sentinel replica's settings (it is the primary after the next failover), or None
    when it does not answer (the sentinels list it; the primary's answer stands)."""
    replica = redis.Redis(host=host, port=port, username=kwargs.get("username"),
                          password=kwargs.get("password"), socket_timeout=2.0,
                          socket_connect_timeout=2.0, decode_responses=True)
    try:
        return _described(replica.info(), f"{host}:{port}")
    except (*UNREACHABLE, *REFUSED):
        return None
    finally:
        replica.close()


def _described(info: dict[str, Any], node: str | None = None) -> dict[str, Any]:
    return {
        "node": node,
        "version": info.get("redis_version"),
        "aof_enabled": bool(int(info.get("aof_enabled", 0))),
        "aof_last_write_status": info.get("aof_last_write_status"),
        "maxmemory": int(info.get("maxmemory", 0) or 0),
        "maxmemory_policy": info.get("maxmemory_policy"),
        "cluster_enabled": str(info.get("cluster_enabled", 0)) == "1",
        # a replica (of host:port), None for a primary: see connection.REPLICA
        "replica_of": (f"{info.get('master_host')}:{info.get('master_port')}"
                       if info.get("role") == "slave" else None),
    }


def _weakest(primaries: list[dict[str, Any]]) -> dict[str, Any]:
    limits = [p["maxmemory"] for p in primaries if p["maxmemory"]]
    evicting = [p["maxmemory_policy"] for p in primaries if p["maxmemory_policy"] != "noeviction"]
    failed = [p["aof_last_write_status"] for p in primaries if p["aof_last_write_status"] != "ok"]
    return {
        "version": min(p["version"] for p in primaries),
        "aof_enabled": all(p["aof_enabled"] for p in primaries),
        # which (of a cluster's nodes, a Sentinel's replicas): "AOF is off" named none
        "aof_off": sorted(p["node"] for p in primaries if not p["aof_enabled"] and p["node"]),
        "aof_last_write_status": failed[0] if failed else primaries[0]["aof_last_write_status"],
        "maxmemory": min(limits) if limits else 0,
        "maxmemory_policy": evicting[0] if evicting else primaries[0]["maxmemory_policy"],
    }


def probe(url: str, timeout: float = 2.0, setting: str = "FLOWKIT_REDIS_URL") -> dict[str, Any]:
    """:func:`describe` the Redis at ``url`` over a connection of its own (then closed), at
    once: StoreUnavailable when it does not answer within ``timeout`` seconds, ConfigError
    when it refuses the credentials, is no Redis, or has not the URL's database (named
    as ``setting``)."""
    client = from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                      decode_responses=True)
    try:
        return describe(client)
    except REFUSED as exc:  # before UNREACHABLE: redis-py files it under ConnectionError
        raise refused(exc) from exc
    except NOT_REDIS as exc:
        raise not_redis(exc, f"The server at {redacted(url)}") from exc
    except UNREACHABLE as exc:
        raise StoreUnavailable(f"Redis at {redacted(url)} is unreachable: {exc}") from exc
    except redis.ResponseError as exc:
        if refused_database(exc):  # /99: the web process's start was a 60-line traceback
            raise ConfigError(database_out_of_range(setting, url)) from exc
        raise
    finally:
        client.close()
