"""Admission under a concurrency key: its cost, and how fast a freed slot is used.

1. Throughput: the same RUNS one-step runs started at once, without a concurrency key and
   with one (four tenants, a limit that never binds: what is measured is admission's
   bookkeeping); total wall time from the first start to the last success, as a ratio.
2. Hand-off: RUNS runs of one tenant with limit 1, each step working 20 ms: every run
   but the first is admitted when the one before ends. The time from a run's end (its
   ``finished_at``) to the next run's step beginning, p50 and p99. Baseline in the same
   run: a raw Celery chain of two tasks, from the first task's end to the second's start.

Own private Redis and one worker process (threads, 4). Prints the figures, the ratios, and
last a machine-readable RESULT line. BENCH_ADMISSION_RUNS (200).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNS = int(os.environ.get("BENCH_ADMISSION_RUNS", "200"))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def wall(workflow, inputs: list[dict]) -> float:
    began = time.perf_counter()
    runs = [workflow.start(data) for data in inputs]
    for run in runs:
        assert run.wait(120).state == "succeeded", run.id
    return time.perf_counter() - began


def main() -> int:
    from flowkit import config
    from flowkit.testing import LocalRedis, WorkerProcess

    with LocalRedis() as server:
        env = {"FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{server.port}/1",
               "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{server.port}/0",
               "PYTHONPATH": str(ROOT)}
        os.environ.update(env)
        config.reset()
        import flowkit
        from bench.admission_app import free, keyed, raw_first, raw_second, single
        from flowkit.store import get_store

        store = get_store()
        worker = WorkerProcess("bench.admission_app", name="bench", env=env, cwd=str(ROOT),
                               pool="threads", concurrency=4).start()
        try:
            inputs = [{"tenant": f"t{i % 4}"} for i in range(RUNS)]
            wall(free, inputs[:20])  # warm up both paths
            wall(keyed, inputs[:20])
            plain, with_key = [], []
            for _ in range(3):  # interleaved: the machine's drift hits both alike
                plain.append(wall(free, inputs))
                with_key.append(wall(keyed, inputs))

            runs = [single.start({"tenant": "solo", "pause": 0.02}) for _ in range(RUNS)]
            for run in runs:
                assert run.wait(300).state == "succeeded", run.id
            records = [flowkit.get_run(r.id) for r in runs]
            began = [float(store.redis.lindex(f"bench:began:{r.id}", 0)) for r in runs]
            ends = sorted((rec.finished_at, rec.id) for rec in records)
            start_of = dict(zip([r.id for r in runs], began, strict=True))
            handoff = [(start_of[nxt] - end) * 1000
                       for (end, _), (_, nxt) in zip(ends, ends[1:], strict=False)]

            raw: list[float] = []
            for _ in range(RUNS):
                key = uuid.uuid4().hex
                (raw_first.si(key) | raw_second.s(key)).delay()
                marks = [store.redis.blpop(f"bench:raw:{key}", timeout=30)[1] for _ in range(2)]
                stamp = {m.split()[0]: float(m.split()[1]) for m in marks}
                raw.append((stamp["began"] - stamp["end"]) * 1000)
        finally:
            worker.terminate()

    p_plain, p_key = statistics.median(plain), statistics.median(with_key)
    h50, h99 = statistics.median(handoff), pct(handoff, 99)
    r50, r99 = statistics.median(raw), pct(raw, 99)
    print(f"{RUNS} one-step runs, no key:        {p_plain:.2f} s (median of 3)")
    print(f"{RUNS} one-step runs, with a key:    {p_key:.2f} s (median of 3)")
    print(f"ratio with/without key: {p_key / p_plain:.3f}")
    print(f"slot freed -> next run's step running: p50 {h50:.2f} ms, p99 {h99:.2f} ms "
          f"({len(handoff)} hand-offs)")
    print(f"raw Celery chain, task end -> next task running: p50 {r50:.2f} ms, p99 {r99:.2f} ms")
    print(f"ratio p50 hand-off/raw chain: {h50 / r50:.2f}")
    print(f"RESULT runs={RUNS} plain_s={p_plain:.3f} keyed_s={p_key:.3f} "
          f"ratio={p_key / p_plain:.3f} handoff_p50_ms={h50:.2f} handoff_p99_ms={h99:.2f} "
          f"raw_p50_ms={r50:.2f} raw_p99_ms={r99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
