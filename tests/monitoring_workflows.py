"""Workflows whose Celery tasks a monitor (Flower) must see: every kind of flowkit task.

They run on queue ``monitored`` only (tests.monitoring_app's workers), so the session's
other workers never take their messages and every task event comes from the worker a
test watches.
"""

from __future__ import annotations

import time

import flowkit
from flowkit import component, continue_with, fan_out, parallel

QUEUE = "monitored"


@component(name="mon.split")
def split(data: dict) -> list:
    return list(range(data["n"]))


@component(name="mon.square")
def square(x: int) -> int:
    return x * x


@component(name="mon.total")
def total(values: list) -> int:
    return sum(values)


@component(name="mon.think")
def think(state: dict) -> object:
    """An agent loop: each step replaces itself with the next until three rounds ran."""
    if state["round"] < 3:
        return continue_with(think, {"round": state["round"] + 1})
    return state


@component(name="mon.broken")
def broken(data: dict) -> dict:
    raise ValueError("no good")


@component(name="mon.slow")
def slow(data: dict) -> dict:
    time.sleep(0.3)
    return data


fanned = flowkit.Workflow("mon.fanned", [split, fan_out(square), total], queue=QUEUE)
batched = flowkit.Workflow("mon.batched", [split, fan_out(square, batch=2), total], queue=QUEUE)
looping = flowkit.Workflow("mon.looping", [think], queue=QUEUE)
# replaced tasks inside a parallel group: its join still gets their outputs
nested = flowkit.Workflow("mon.nested", [split, parallel(fan_out(square), total)], queue=QUEUE)
looping_twice = flowkit.Workflow("mon.looping_twice", [parallel(think, think)], queue=QUEUE)
failing = flowkit.Workflow("mon.failing", [broken.retry(attempts=1)], queue=QUEUE)
slowly = flowkit.Workflow("mon.slowly", [slow], queue=QUEUE)
