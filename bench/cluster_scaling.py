"""Steps per second with the store on a Redis Cluster of 1 and of 3 primaries.

The store spreads runs over the cluster's primaries (16 shards, each a hash slot); this
measures what that buys end to end: RUNS runs of the 50-step no-op chain
(bench/overhead_app.py) started at once, worker processes (threads) running them, wall
time from the first start to the last success, as steps per second. The same on a plain
``redis://`` store for reference. Each store is fresh (real redis-server processes,
flowkit.testing.cluster); the Celery broker is a plain Redis of its own, as it must be
with a Cluster store. Each figure is the best of ROUNDS.

On a small machine the workers, not Redis, are the ceiling: the ratio then says what the
cluster costs (client-side slot routing) rather than what it adds. Prints the figures and
last a machine-readable RESULT line. BENCH_CLUSTER_RUNS (20), BENCH_CLUSTER_ROUNDS (3),
BENCH_CLUSTER_WORKERS (2).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNS = int(os.environ.get("BENCH_CLUSTER_RUNS", "20"))
ROUNDS = int(os.environ.get("BENCH_CLUSTER_ROUNDS", "3"))
WORKERS = int(os.environ.get("BENCH_CLUSTER_WORKERS", "2"))


def steps_per_second(store_url: str, broker_url: str) -> float:
    """Best of ROUNDS: RUNS chains started at once, steps done per wall second."""
    from flowkit import config
    from flowkit.engine import broker
    from flowkit.testing import WorkerProcess

    env = {"FLOWKIT_REDIS_URL": store_url, "FLOWKIT_BROKER_URL": broker_url,
           "PYTHONPATH": str(ROOT)}
    os.environ.update(env)
    config.reset()
    broker.use_app(None)
    import flowkit
    from bench.overhead_app import STEPS, chain_workflow

    flowkit.create_celery_app("bench-overhead", imports=["bench.overhead_app"])
    workers = [WorkerProcess("bench.overhead_app", name=f"bench{i}", env=env, cwd=str(ROOT),
                             pool="threads", concurrency=8).start() for i in range(WORKERS)]
    try:
        def one_round() -> float:
            began = time.perf_counter()
            runs = [chain_workflow.start(0) for _ in range(RUNS)]
            for run in runs:
                assert run.wait(300).state == "succeeded", run.id
            return RUNS * STEPS / (time.perf_counter() - began)

        one_round()  # warm-up: imports, connections, script loads
        return max(one_round() for _ in range(ROUNDS))
    finally:
        for worker in workers:
            worker.terminate()


def main() -> int:
    from flowkit.testing import LocalRedis
    from flowkit.testing.cluster import LocalCluster

    figures: dict[str, float] = {}
    with LocalRedis() as broker_server, LocalRedis() as plain:
        figures["plain"] = steps_per_second(f"redis://127.0.0.1:{plain.port}/1", broker_server.url)
        for primaries in (1, 3):
            with LocalCluster(primaries) as cluster:
                figures[f"p{primaries}"] = steps_per_second(cluster.url, broker_server.url)
    ratio = figures["p3"] / figures["p1"]
    print(f"{RUNS} runs x 50 no-op steps, {WORKERS} worker processes x 8 threads, "
          f"best of {ROUNDS}, {os.cpu_count()} CPUs")
    print(f"plain redis://             {figures['plain']:8.1f} steps/s")
    print(f"Redis Cluster, 1 primary   {figures['p1']:8.1f} steps/s")
    print(f"Redis Cluster, 3 primaries {figures['p3']:8.1f} steps/s")
    print(f"scaling 3 primaries / 1 primary: {ratio:.2f}x")
    print(f"RESULT runs={RUNS} workers={WORKERS} cpus={os.cpu_count()} "
          f"plain_steps_s={figures['plain']:.1f} cluster1_steps_s={figures['p1']:.1f} "
          f"cluster3_steps_s={figures['p3']:.1f} scaling={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
