"""Worker app of bench/waits.py: a step that waits for input, and a raw Celery task."""

import time

import flowkit
from flowkit.store import get_store

app = flowkit.create_celery_app("bench-waits", imports=["bench.waits_app"])


@flowkit.component(name="bench.ask")
def ask(data: dict) -> dict:
    answer = flowkit.wait_for_input("go")
    return {**data, **answer}


asking = flowkit.Workflow("bench.asking", [ask])


@app.task(name="bench.raw_started")
def raw_started(key: str) -> None:
    """The baseline: a plain Celery task saying when it began."""
    get_store().redis.rpush(f"bench:raw:{key}", time.time())
