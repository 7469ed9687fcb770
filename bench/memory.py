"""Redis memory of a finished run, as kept for its retention.

RUNS runs of 10 no-op steps (input ``{"n": 1, "text": "hello"}``) on a private Redis; for
each, the bytes of every key it has (``MEMORY USAGE``, exact) right after it ended and
after beat's sweep compacted it (its events and trace in one archive). Also the bytes per
event and per span in the streams. Baseline in the same run: DBOS (SQLite), the growth of
its database file per run of the same workflow. Prints the medians and a RESULT line.
BENCH_MEMORY_RUNS (50).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.local import deployment  # noqa: E402

RUNS = int(os.environ.get("BENCH_MEMORY_RUNS", "50"))


def run_bytes(store, run_id: str) -> dict[str, int]:
    keys = [k for k in store.redis.scan_iter(f"*{run_id}*", count=1000)]
    return {k.rpartition(":")[2] if k.endswith(("events", "trace", "ckpt", "attempts",
                                                "archive")) else "record":
            store.redis.memory_usage(k, samples=0) for k in keys}


def main() -> int:
    with deployment("bench.memory_app", concurrency=1):
        from bench.memory_app import ten_steps
        from flowkit import config
        from flowkit.engine.reaper import compact_ended
        from flowkit.store import get_store

        store = get_store()
        runs = [ten_steps.start({"n": 1, "text": "hello"}) for _ in range(RUNS)]
        for run in runs:
            assert run.wait(60).state == "succeeded"
        fresh = [run_bytes(store, r.id) for r in runs]
        per_event = statistics.median(
            f["events"] / len(r.events()) for f, r in zip(fresh, runs, strict=True))
        per_span = statistics.median(
            f["trace"] / len(store.read_trace(r.id)) for f, r in zip(fresh, runs, strict=True))
        config.configure(compact_after_seconds=0)
        while compact_ended():
            pass
        compacted = [run_bytes(store, r.id) for r in runs]

    from bench import peer_dbos

    dbos = peer_dbos.figures(10, 1, RUNS, measure="bytes")
    total = statistics.median(sum(f.values()) for f in fresh)
    small = statistics.median(sum(f.values()) for f in compacted)
    parts = {k: statistics.median(f.get(k, 0) for f in compacted) for k in compacted[0]}
    print(f"finished 10-step run, as it ended: {total:,.0f} bytes "
          f"(events {statistics.median(f['events'] for f in fresh):,.0f}, "
          f"trace {statistics.median(f['trace'] for f in fresh):,.0f})")
    print(f"after compaction: {small:,.0f} bytes ({', '.join(f'{k} {v:,.0f}' for k, v in parts.items())})")
    print(f"per event in the stream: {per_event:,.0f} bytes; per span record: {per_span:,.0f} bytes")
    result = f"RESULT fresh_bytes={total:.0f} compacted_bytes={small:.0f} per_event={per_event:.0f}"
    if dbos:
        print(f"DBOS (SQLite) database growth per run: {dbos['bytes_per_run']:,.0f} bytes")
        print(f"ratio compacted flowkit/DBOS: {small / dbos['bytes_per_run']:.2f}")
        result += f" dbos_bytes={dbos['bytes_per_run']:.0f}"
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
