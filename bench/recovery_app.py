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


# -- the loaded mode: 18-step runs with every shape, workers SIGKILLed under load ------------


@flowkit.component(name="bench.step")
def step(data: dict) -> dict:
    """A step of real length (``pause`` seconds), so the queue stays busy."""
    time.sleep(data.get("pause", 0.8))
    return {**data, "n": data.get("n", 0) + 1}


@flowkit.component(name="bench.first_of")
def first_of(outputs: list) -> dict:
    return outputs[0]


@flowkit.component(name="bench.spread")
def spread(data: dict) -> list:
    return [dict(data) for _ in range(3)]


@flowkit.component(name="bench.decide")
def decide(data: dict) -> object:
    """An agent loop: two more turns, then done."""
    time.sleep(data.get("pause", 0.8))
    if data.get("turns", 0) < 2:
        return flowkit.continue_with(decide, {**data, "turns": data.get("turns", 0) + 1})
    return data


#: 18 steps: a chain, a parallel block, a fan-out and an agent loop.
long_run = flowkit.Workflow("bench.long", [
    step, step, step, flowkit.parallel(step, [step, step]), first_of, spread,
    flowkit.fan_out(step), first_of, decide, step, step, step,
])
