"""Workflows the crash tests run, with side effects counted in Redis across processes.

``chaos:started:<run>:<step>`` counts bodies that began, ``chaos:finished:...`` bodies
that returned, and ``chaos:rerun:<run>`` bodies that began although their step was
already checkpointed (the one thing that must never happen).
"""

from __future__ import annotations

import time

import flowkit
from flowkit import component
from flowkit.heartbeat import worker_id
from flowkit.serialization import dumps
from flowkit.store import get_store

QUEUE = "chaos"


def _began() -> flowkit.StepContext:
    ctx = flowkit.context()
    store = get_store()
    if store.redis.hexists(store.keys.checkpoints(ctx.run_id), ctx.step):
        store.redis.incr(f"chaos:rerun:{ctx.run_id}")
    store.redis.incr(f"chaos:started:{ctx.run_id}:{ctx.step}")
    return ctx


def _finished(ctx: flowkit.StepContext) -> None:
    get_store().redis.incr(f"chaos:finished:{ctx.run_id}:{ctx.step}")


@component(name="chaos.work")
def work(data: dict) -> dict:
    """Streams ``chunks`` chunks named ``<step>#<i>``, ``pause`` seconds apart."""
    ctx = _began()
    for i in range(data.get("chunks", 3)):
        time.sleep(data.get("pause", 0.05))
        flowkit.emit(f"{ctx.step}#{i}")
    _finished(ctx)
    return {**data, "n": data["n"] + 1}


@component(name="chaos.hold")
def hold(data: dict) -> dict:
    """A long step: says where it runs, then blocks in I/O (BLPOP) until the test opens its gate."""
    ctx = _began()
    r = get_store().redis
    r.rpush(f"chaos:waiting:{ctx.run_id}", dumps({"attempt": ctx.attempt, "worker": worker_id()}))
    deadline = time.monotonic() + 120
    while r.blpop(f"chaos:gate:{ctx.run_id}", timeout=1) is None:  # under the socket timeout
        if flowkit.is_cancelled():  # cooperative: handed over, restarted or cancelled
            raise flowkit.RunCancelled("stopped waiting")
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
    _finished(ctx)
    return {**data, "n": data["n"] + 1}


@component(name="chaos.broken")
def broken(data: dict) -> dict:
    _began()
    raise RuntimeError("the model returned nonsense")


ten = flowkit.Workflow("chaos.ten", [work] * 10)
held = flowkit.Workflow("chaos.held", [work, hold, work])
doomed = flowkit.Workflow("chaos.doomed", [work, broken])
