"""Per-step cost of a flowkit workflow vs a raw Celery chain (same Redis, same worker) and
vs DBOS (SQLite), in one run: 50 sequential no-op steps.

A flowkit step is a ``begin_step`` (checkpoint lookup, lease, ``step.started``) and a
checkpoint write with ``step.completed`` and its trace span: two Redis round trips, with
Redis's AOF as configured. A worker runs the steps of a chain back to back within its
budget (FLOWKIT_INLINE_STEPS_SECONDS), so most steps skip the broker's round trip that
every task of a raw Celery chain pays. DBOS commits each step to SQLite (an fsync each, its
default). Prints the medians over ROUNDS and, last, a machine-readable RESULT line.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))


def main() -> int:
    from flowkit import config
    from flowkit.testing import LocalRedis, WorkerProcess

    with LocalRedis() as redis_server:
        env = {"FLOWKIT_REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT)}
        os.environ.update(env)
        config.reset()
        from celery import chain

        from bench.overhead_app import STEPS, chain_workflow, raw_noop

        worker = WorkerProcess("bench.overhead_app", name="bench", env=env, cwd=str(ROOT),
                               pool="threads", concurrency=1)
        with worker:
            def flowkit_round() -> float:
                t = time.perf_counter()
                run = chain_workflow.start(0)
                assert run.wait(120).state == "succeeded"
                return (time.perf_counter() - t) * 1000 / STEPS

            def celery_round() -> float:
                t = time.perf_counter()
                chain(raw_noop.s(0), *[raw_noop.s() for _ in range(STEPS - 1)]).apply_async().get(120)
                return (time.perf_counter() - t) * 1000 / STEPS

            flowkit_round(), celery_round()  # warm up connections and imports
            fk, raw = [], []
            for i in range(ROUNDS):
                fk.append(flowkit_round())
                raw.append(celery_round())
                print(f"round {i + 1}: flowkit {fk[-1]:.2f} ms/step, celery {raw[-1]:.2f} ms/step",
                      flush=True)
    from bench import peer_dbos

    dbos = peer_dbos.figures(STEPS, ROUNDS, 20)
    fk_ms, raw_ms = statistics.median(fk), statistics.median(raw)
    print(f"flowkit workflow, {STEPS} sequential no-op steps: {fk_ms:.2f} ms/step (median of {ROUNDS})")
    print(f"raw Celery chain, {STEPS} no-op tasks:          {raw_ms:.2f} ms/step (median of {ROUNDS})")
    print(f"ratio flowkit/raw: {fk_ms / raw_ms:.2f} (target <= 0.5)")
    result = (f"RESULT flowkit_ms_per_step={fk_ms:.3f} celery_ms_per_step={raw_ms:.3f} "
              f"ratio={fk_ms / raw_ms:.3f}")
    if dbos:
        db_ms = dbos["ms_per_step"]
        print(f"DBOS (SQLite) workflow, {STEPS} no-op steps: {db_ms:.2f} ms/step (median of {ROUNDS})")
        print(f"ratio flowkit/DBOS: {fk_ms / db_ms:.2f} (target <= 0.5)")
        result += f" dbos_ms_per_step={db_ms:.3f} ratio_dbos={fk_ms / db_ms:.3f}"
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
