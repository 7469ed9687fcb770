"""Worker app of bench/recovery.py: a flowkit step and a raw Celery task, both blocking until released.

Each says where and when it started (``bench:started:<key>``) so the benchmark can see
the moment it runs again on another worker after a SIGKILL.
"""

import os
import time

import flowkit
from flowkit.store import get_store

app = flowkit.create_celery_app("bench-recovery", imports=["bench.recovery_app"])


def _started(key: str) -> None:
    get_store().redis.rpush(f"bench:started:{key}", f"{time.time()} {os.getpid()}")


def _block(key: str) -> None:
    redis = get_store().redis
    while redis.blpop(f"bench:gate:{key}", timeout=1) is None:
        if flowkit.is_cancelled():
            raise flowkit.RunCancelled("moved to another worker")
    redis.rpush(f"bench:done:{key}", 1)


@flowkit.component(name="bench.hold")
def hold(data: dict) -> dict:
    ctx = flowkit.context()
    _started(ctx.run_id)
    _block(ctx.run_id)
    return data


held = flowkit.Workflow("bench.held", [hold])


@app.task(name="bench.raw_hold", acks_late=True, reject_on_worker_lost=True)
def raw_hold(key: str) -> None:
    """The baseline: plain Celery, redelivered by the broker after its visibility timeout."""
    _started(key)
    _block(key)
