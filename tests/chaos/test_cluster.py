"""The store on Redis Cluster (``redis+cluster://``): a real three-primary cluster of
``redis-server`` processes, the Celery broker on a plain Redis of its own (Celery has no
Cluster transport). A hundred runs through real worker processes finish and their keys
lie on every primary; the live relay streams a run's events; the reaper recovers a run
whose worker died.
"""

from __future__ import annotations

import threading
import time

import pytest

from flowkit.engine.reaper import compact_ended
from flowkit.events import START
from flowkit.serialization import loads
from flowkit.store import get_store
from flowkit.store.keys import SHARDS
from flowkit.testing import LocalRedis
from flowkit.testing.cluster import LocalCluster
from tests.api.conftest import make_app, serve
from tests.api.helpers import TERMINAL, sse_read
from tests.chaos.conftest import deployed, open_gate, wait_for, waiting
from tests.chaos.workflows import held, ten
from tests.cluster import cluster_fixture, primaries  # noqa: F401 - the cluster fixture

RUNS = 100


@pytest.fixture
def on_cluster(cluster, flowkit_env, tmp_path, monkeypatch):
    """This process and a deployment (workers, beat) with the store on the cluster."""
    with LocalRedis() as broker, \
            deployed(monkeypatch, tmp_path, cluster.url, broker.url) as deployment:
        for node in primaries(cluster):
            node.flushall()
        yield deployment


def run_keys_per_primary(cluster: LocalCluster, prefix: str) -> list[int]:
    return [sum(1 for _ in node.scan_iter(match=f"{prefix}:{{s*}}:run:*", count=500))
            for node in primaries(cluster)]


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
    # retention's compaction scans every shard too; a compacted run still tells its history
    compacted = compact_ended(time.time() + 10**6)
    assert compacted and store.get_run(compacted[0])["state"] == "succeeded"
    assert store.history(compacted[0], START)[-1] == store.last_event(compacted[0])
    assert len({store.keys.tag(s) for s in range(SHARDS)}) == SHARDS


def test_the_live_relay_streams_a_run_on_the_cluster(cluster, on_cluster):
    """An SSE client connected while the run is held gets the events written after it
    connected (the relay's per-slot reads), up to the run's end."""
    on_cluster.worker("a")
    run = held.start({"n": 0, "chunks": 2, "pause": 0.01})
    waiting(run)  # the hold step runs: what follows is written while the client listens
    got: list[dict] = []

    def arrived(events: list[dict]) -> bool:  # sse_read's stop check: sees each event come
        got[:] = events
        return events[-1]["type"] in TERMINAL

    served = serve(make_app())
    api = next(served)
    try:
        with api.client() as client:
            reader = threading.Thread(target=sse_read, daemon=True, args=(
                client, f"/runs/{run.id}/events"), kwargs={
                "headers": {"Accept": "text/event-stream"}, "stop": arrived})
            reader.start()
            wait_for(lambda: got, 20, "the history before the hold to reach the client")
            seen_before_gate = len(got)
            open_gate(run)
            reader.join(30)
    finally:
        next(served, None)
    assert got[-1]["type"] == "run.succeeded", got[-1]
    assert len(got) > seen_before_gate
    # the last step runs only after the gate opened: its events came through the relay live
    after_gate = [e["type"] for e in got if e.get("step") == "2:chaos.work"]
    assert "step.completed" in after_gate, [(e["type"], e.get("step")) for e in got]


def test_the_reaper_recovers_a_run_whose_worker_died_on_the_cluster(cluster, on_cluster):
    a = on_cluster.worker("a")
    on_cluster.beat()
    run = held.start({"n": 0, "chunks": 2, "pause": 0.01})
    first = waiting(run)
    assert first["attempt"] == 1 and first["worker"].startswith("a@")
    on_cluster.worker("b")
    a.kill()  # its lease lapses; the reaper, scanning every shard, restarts the step
    second = waiting(run, timeout=30)
    assert second["attempt"] == 2 and second["worker"].startswith("b@")
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded", done.error
    assert loads(get_store().get_run(run.id)["output"])["n"] == 3
