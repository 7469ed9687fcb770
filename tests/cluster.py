"""What both Redis Cluster test modules use: a 3-primary cluster per module, and a plain
client of each primary (to see where keys landed, or to set each node up)."""

from __future__ import annotations

import pytest
import redis

from flowkit.testing.cluster import LocalCluster


def primaries(cluster: LocalCluster) -> list[redis.Redis]:
    return [redis.Redis(port=port, socket_timeout=5) for port in cluster.ports]


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture():
    with LocalCluster(3) as running:
        yield running
