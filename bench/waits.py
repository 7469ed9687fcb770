"""Answering a paused run: from POSTing its input to the waiting step running again.

200 runs each pause in ``wait_for_input``; for each, the time from sending
``POST /runs/<id>/input/go`` (the reference web process, gunicorn) to the resumed step's
``step.started`` event. The baseline, in the same run on the same worker: from
``task.delay()`` to a plain Celery task's first line. Also the Redis memory one waiting
run holds (every key of it). Own private Redis; prints p50/p99, the ratio, and last a
machine-readable RESULT line. BENCH_WAITS (200).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.local import API_KEY, deployment, pct  # noqa: E402

WAITS = int(os.environ.get("BENCH_WAITS", "200"))


def main() -> int:
    import httpx

    with deployment("bench.waits_app", web=True) as local:
        import flowkit
        from bench.waits_app import asking, raw_started
        from flowkit.store import get_store

        store, web = get_store(), local["web"]

        def paused(run):
            for event in flowkit.follow(run.id):
                if event.type == "run.waiting":
                    return
            raise RuntimeError("the run did not pause")

        # memory of one waiting run: every key it has
        probe = asking.start({"i": -1})
        paused(probe)
        keys = [k for k in store.redis.scan_iter(f"*{probe.id}*")]
        memory = sum(store.redis.memory_usage(k) or 0 for k in keys)

        resumed: list[float] = []
        with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {API_KEY}"}) as api:
            api.get("/healthz")  # warm the connection
            for i in range(WAITS):
                run = asking.start({"i": i})
                paused(run)
                cursor = run.events()[-1].id
                sent = time.time()
                assert api.post(f"/runs/{run.id}/input/go", json={"ok": True}).status_code == 202
                for event in flowkit.follow(run.id, cursor):
                    if event.type == "step.started":
                        resumed.append((event.data["ts"] - sent) * 1000)
                        break
        raw: list[float] = []
        for _ in range(WAITS):
            key = uuid.uuid4().hex
            sent = time.time()
            raw_started.delay(key)
            got = store.redis.blpop(f"bench:raw:{key}", timeout=30)
            raw.append((float(got[1]) - sent) * 1000)

    fk50, fk99 = statistics.median(resumed), pct(resumed, 99)
    raw50, raw99 = statistics.median(raw), pct(raw, 99)
    print(f"input POST -> waiting step running again: p50 {fk50:.2f} ms, p99 {fk99:.2f} ms "
          f"({WAITS} waits)")
    print(f"raw Celery delay() -> task running:        p50 {raw50:.2f} ms, p99 {raw99:.2f} ms")
    print(f"ratio p50 flowkit/raw: {fk50 / raw50:.2f}")
    print(f"Redis memory of one waiting run: {memory} bytes ({len(keys)} keys)")
    print(f"RESULT resume_p50_ms={fk50:.2f} resume_p99_ms={fk99:.2f} raw_p50_ms={raw50:.2f} "
          f"raw_p99_ms={raw99:.2f} waiting_run_bytes={memory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
