"""Worker app of bench/admission.py: one short step, run with and without a concurrency key."""

import time

import flowkit
from flowkit.store import get_store

app = flowkit.create_celery_app("bench-admission", imports=["bench.admission_app"])


@flowkit.component(name="bench.short")
def short(data: dict) -> dict:
    """Says when it began (the hand-off figure), then works ``pause`` seconds."""
    get_store().redis.rpush(f"bench:began:{flowkit.context().run_id}", time.time())
    time.sleep(data.get("pause", 0.0))
    return data


free = flowkit.Workflow("bench.free", [short])
#: A key per tenant whose limit never binds in the throughput figure: its cost is admission.
keyed = flowkit.Workflow("bench.keyed", [short],
                         concurrency=flowkit.Concurrency(limit=1000, key="tenant"))
#: One run at a time: every run but the first starts when the one before frees its slot.
single = flowkit.Workflow("bench.single", [short],
                          concurrency=flowkit.Concurrency(limit=1, key="tenant"))


@app.task(name="bench.raw_first")
def raw_first(key: str) -> None:
    """Baseline of the hand-off: a plain Celery chain's first task; says when it ended."""
    get_store().redis.rpush(f"bench:raw:{key}", f"end {time.time()}")


@app.task(name="bench.raw_second")
def raw_second(_: None, key: str) -> None:
    get_store().redis.rpush(f"bench:raw:{key}", f"began {time.time()}")
