"""Starting a run, against raw Celery and DBOS in the same run.

For STARTS one-step runs each (one at a time, a threads worker of 4, own private Redis):
- ``start()`` -> the step running (its first line), against raw Celery ``delay()`` -> the
  task running;
- ``POST /workflows/<name>/runs`` (the reference web process, gunicorn) -> the run's
  ``step.started`` read on its WebSocket (opened with the token the POST answered);
- the same POST with ``Accept: text/event-stream`` -> ``step.started`` on the answer
  itself (start and follow in one request: what the JS client's ``start()`` does);
- ``start()`` -> ``result()`` back, against DBOS (SQLite) ``start_workflow().get_result()``
  (in BENCH_BLOCKS blocks, 4, each beside a DBOS block of the same size: the ratio is the
  median of the blocks' ratios);
- what a start costs its caller back to back (BENCH_BURST starts in a row to a queue no
  worker consumes, so nothing competes for the CPU), against ``delay()`` the same way.
Prints p50/p99, the ratios, and last a machine-readable RESULT line. BENCH_STARTS (200).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import peer_dbos  # noqa: E402
from bench.local import API_KEY, deployment, pct  # noqa: E402

STARTS = int(os.environ.get("BENCH_STARTS", "200"))
BURST = int(os.environ.get("BENCH_BURST", "1000"))
#: DBOS runs in a process of its own, in BLOCKS blocks between flowkit's.
BLOCKS = int(os.environ.get("BENCH_BLOCKS", "4"))


def burst(send) -> float:
    """Milliseconds per call of ``send``, BURST calls back to back (median of 3 rounds)."""
    rounds = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(BURST):
            send()
        rounds.append((time.perf_counter() - t) * 1000 / BURST)
    return statistics.median(rounds)


def main() -> int:
    import httpx
    import websocket

    with deployment("bench.start_app", web=True) as local:
        from bench.start_app import IDLE, one_step, parked, raw_began
        from flowkit.engine.broker import get_app
        from flowkit.engine.control import Run
        from flowkit.store import get_store

        store, web = get_store(), local["web"]

        def began(run_id: str) -> float:
            return float(store.redis.blpop(f"bench:began:{run_id}", timeout=30)[1])

        def settled() -> None:
            """The worker finished its task (bench.start_app's task_postrun): each figure
            begins on an idle worker, not beside the end of the task before it."""
            assert store.redis.blpop(IDLE, timeout=30), "the worker did not finish its task"

        for _ in range(20):  # warm up
            one_step.start({}).result(30)
            settled()
        # this process's heap (flowkit, Celery, DBOS, the clients) is the harness's: frozen,
        # a full collection of it (60-80 ms here) does not land in one figure's tail
        gc.freeze()
        to_step, raw, to_result, over_http, over_sse = [], [], [], [], []
        block_results: list[float] = []
        dbos_blocks: list[dict[str, float] | None] = []
        dbos_wanted = importlib.util.find_spec("dbos") is not None
        with httpx.Client(base_url=web.url,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as api:
            api.get("/healthz")
            for _block in range(BLOCKS):
                for _ in range(STARTS // BLOCKS):  # interleaved: the drift hits all alike
                    t = time.time()
                    run = one_step.start({})
                    to_step.append((began(run.id) - t) * 1000)
                    run.result(30)
                    settled()

                    key = uuid.uuid4().hex
                    t = time.time()
                    raw_began.delay(key)
                    raw.append((float(store.redis.blpop(f"bench:raw:{key}", timeout=30)[1]) - t)
                               * 1000)
                    settled()

                    t = time.perf_counter()
                    one_step.start({}).result(30)
                    to_result.append((time.perf_counter() - t) * 1000)
                    settled()

                    t = time.perf_counter()
                    posted = api.post("/workflows/bench.one_step/runs", json={}).json()
                    ws = websocket.create_connection(
                        f"ws://127.0.0.1:{web.port}/runs/{posted['id']}/stream"
                        f"?token={posted['token']}", timeout=30)
                    try:
                        while json.loads(ws.recv())["type"] != "step.started":
                            pass
                    finally:
                        ws.close()
                    over_http.append((time.perf_counter() - t) * 1000)
                    Run.load(posted["id"]).wait(30)
                    settled()

                    t = time.perf_counter()
                    with api.stream("POST", "/workflows/bench.one_step/runs", json={},
                                    headers={"Accept": "text/event-stream"}) as answer:
                        for line in answer.iter_lines():
                            if line.startswith("data: ") and \
                                    json.loads(line[6:])["type"] == "step.started":
                                break
                        over_sse.append((time.perf_counter() - t) * 1000)
                        run_id = answer.headers["X-Flowkit-Run"]
                    Run.load(run_id).wait(30)
                    settled()
                # DBOS in its own process, between the blocks: each block's result is
                # compared with the DBOS block next to it in time
                block_results.append(statistics.median(to_result[-(STARTS // BLOCKS):]))
                if dbos_wanted:
                    dbos_blocks.append(peer_dbos.figures(1, 1, STARTS // BLOCKS))

        # back to back, nothing consuming: the caller's own cost of a start
        for _ in range(50):  # warm up
            parked.start({})
        per_start = burst(lambda: parked.start({}))
        per_delay = burst(lambda: raw_began.apply_async(("parked",), queue="bench.parked"))
        get_app().connection_for_write().default_channel.queue_purge("bench.parked")

    s50, r50, res50, h50, e50 = (statistics.median(x)
                                 for x in (to_step, raw, to_result, over_http, over_sse))
    print(f"start() -> step running:         p50 {s50:.2f} ms, p99 {pct(to_step, 99):.2f} ms")
    print(f"raw Celery delay() -> task:      p50 {r50:.2f} ms, p99 {pct(raw, 99):.2f} ms")
    print(f"ratio p50 start/delay: {s50 / r50:.2f} (target <= 1.2)")
    print(f"POST -> step.started on its WebSocket: p50 {h50:.2f} ms, p99 {pct(over_http, 99):.2f} ms")
    print(f"ratio p50 POST/delay: {h50 / r50:.2f} (target <= 2.5)")
    print(f"POST (Accept: text/event-stream) -> step.started on its answer: p50 {e50:.2f} ms, "
          f"p99 {pct(over_sse, 99):.2f} ms")
    print(f"ratio p50 POST-SSE/delay: {e50 / r50:.2f}")
    print(f"start() -> result():             p50 {res50:.2f} ms, p99 {pct(to_result, 99):.2f} ms")
    print(f"back to back: start() {per_start:.3f} ms each, delay() {per_delay:.3f} ms each "
          f"(ratio {per_start / per_delay:.2f})")
    result = (f"RESULT start_p50_ms={s50:.2f} delay_p50_ms={r50:.2f} ratio_start={s50 / r50:.3f} "
              f"post_ws_p50_ms={h50:.2f} ratio_post={h50 / r50:.3f} post_sse_p50_ms={e50:.2f} "
              f"ratio_post_sse={e50 / r50:.3f} result_p50_ms={res50:.2f} "
              f"burst_start_ms={per_start:.3f} burst_delay_ms={per_delay:.3f}")
    if dbos_wanted:
        d50s = [d["result_p50_ms"] for d in dbos_blocks]
        ratios = sorted(f / d for f, d in zip(block_results, d50s, strict=True))
        d50, ratio = statistics.median(d50s), statistics.median(ratios)
        print(f"DBOS start_workflow().get_result(): p50 {d50:.2f} ms (median of {BLOCKS} blocks)")
        print(f"ratio p50 result flowkit/DBOS: {ratio:.2f} (median of the blocks' ratios, "
              f"{ratios[0]:.2f}-{ratios[-1]:.2f}; target <= 0.5)")
        result += f" dbos_result_p50_ms={d50:.2f} ratio_result_dbos={ratio:.3f}"
    else:
        print("DBOS is not installed: pip install -e '.[peers]' to compare with it")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
