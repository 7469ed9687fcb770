"""Worker app of bench/start_latency.py: a one-step workflow that says when its step began,
and the raw Celery task of the baseline."""

import time

from celery import signals

import flowkit
from flowkit.store import get_store

app = flowkit.create_celery_app("bench-start", imports=["bench.start_app"])


@flowkit.component(name="bench.first")
def first(data: dict) -> dict:
    get_store().redis.rpush(f"bench:began:{flowkit.context().run_id}", time.time())
    return data


one_step = flowkit.Workflow("bench.one_step", [first])
#: The same, on a queue no worker consumes: what a start costs its caller, back to back.
parked = flowkit.Workflow("bench.parked", [first], queue="bench.parked")


@app.task(name="bench.raw_began")
def raw_began(key: str) -> None:
    get_store().redis.rpush(f"bench:raw:{key}", time.time())


#: One entry per task this worker finished: the bench waits for it between figures.
IDLE = "bench:idle"


@signals.task_postrun.connect
def _finished(**_: object) -> None:
    get_store().redis.rpush(IDLE, 1)
