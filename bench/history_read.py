"""Reading a finished run's whole history, page by page, once beat has compacted it.

A follower that opens a finished run's stream from its start (a page reloaded, the CLI's
``flowkit runs events``, ``run.events()``) reads its history in pages of 500 events. Once
compacted, a run's events are one zlib JSON archive (flowkit.store.archive); the figure is
the time to read all of them, page by page, through the store, as flowkit reads them. The
same events, uncompacted, read through the store too, for where compaction's cost lies.
Baseline in the same run: raw Redis, ``XRANGE`` of the same events in the same pages from a
stream (what an uncompacted history costs at its least). Prints medians of ROUNDS rounds
and RESULT lines. BENCH_HISTORY_EVENTS (20000), BENCH_HISTORY_ROUNDS (5).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EVENTS = int(os.environ.get("BENCH_HISTORY_EVENTS", "20000"))
ROUNDS = int(os.environ.get("BENCH_HISTORY_ROUNDS", "5"))
PAGE = 500


def event(i: int) -> str:
    """A token chunk as an LLM step streams it (the bulk of a long run's events)."""
    return json.dumps({"type": "step.output", "step": "1:answer", "attempt": 1,
                       "ts": 1765000000.0 + i / 1000, "data": {"chunk": f"token {i} "}},
                      separators=(",", ":"))


def timed(read_all, before=lambda round_: None) -> float:
    times = []
    for round_ in range(ROUNDS):
        before(round_)
        began = time.perf_counter()
        got = read_all()
        times.append(time.perf_counter() - began)
        assert got == EVENTS, got
    return statistics.median(times)


def main() -> int:
    from flowkit import config
    from flowkit.store import archive, get_store
    from flowkit.testing import LocalRedis

    with LocalRedis() as server:
        os.environ["FLOWKIT_REDIS_URL"] = f"redis://127.0.0.1:{server.port}/1"
        config.reset()
        store = get_store()
        raw = store.redis
        stream, compacted, live = "bench:raw", "bench-compacted", "bench-live"
        pipe = raw.pipeline(transaction=False)
        for i in range(EVENTS):
            pipe.xadd(stream, {"e": event(i)}, id=f"{1765000000000 + i}-0")
            pipe.xadd(store.keys.events(live), {"e": event(i)}, id=f"{1765000000000 + i}-0")
        pipe.execute()
        entries = [(e[0], e[1]["e"]) for e in raw.xrange(stream)]

        def new_archive(round_: int) -> None:
            # other bytes each round (a span that names it): each read starts cold, as a
            # reader does that no one on its server has read before
            raw.set(store.keys.archive(compacted),
                    archive.pack(entries, [json.dumps({"round": round_})]))

        def raw_pages() -> int:
            n, cursor = 0, "-"
            while True:
                page = raw.xrange(stream, min=cursor, count=PAGE)
                n += len(page)
                if len(page) < PAGE:
                    return n
                cursor = "(" + page[-1][0]

        def store_pages(run_id: str):
            def read() -> int:
                n, cursor = 0, "0-0"
                while True:
                    page = store.history(run_id, cursor, PAGE)
                    n += len(page)
                    if len(page) < PAGE:
                        return n
                    cursor = page[-1][0]
            return read

        raw_s = timed(raw_pages)
        live_s = timed(store_pages(live))
        compacted_s = timed(store_pages(compacted), new_archive)
        config.reset()
    print(f"{EVENTS:,} events in pages of {PAGE}: raw XRANGE {raw_s * 1000:.1f} ms; "
          f"flowkit, uncompacted {live_s * 1000:.1f} ms, compacted {compacted_s * 1000:.1f} ms")
    print(f"RESULT history uncompacted x{live_s / raw_s:.2f} raw XRANGE")
    print(f"RESULT history compacted x{compacted_s / raw_s:.2f} raw XRANGE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
