"""Async components and workflows for tests/test_async_components.py, one set per pool.

Each pool's worker serves its own queue, so the same workflows are built once per queue
(names suffixed with the queue). Side effects are counted in Redis (``acount:<run>:<what>``)
so a test sees how often each piece ran, across worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from marshmallow import fields

import flowkit
from flowkit import component, continue_with, fan_out, parallel
from flowkit.store import get_store

QUEUES = {"threads": "async-threads", "prefork": "async-prefork", "gevent": "async-gevent"}


class Flaky(Exception):
    pass


def count(what: str) -> int:
    return get_store().redis.incr(f"acount:{flowkit.context().run_id}:{what}")


def mark(what: str) -> None:
    get_store().redis.set(f"amark:{flowkit.context().run_id}:{what}", 1)


@component(name="a.add_one")
async def add_one(data: dict) -> dict:
    await asyncio.sleep(0.01)
    count("add_one")
    return {"n": data["n"] + 1}


@component(name="a.double")
async def double(data: dict) -> dict:
    await asyncio.sleep(0.01)
    count("double")
    return {"n": data["n"] * 2}


@component(name="a.sync_triple")
def sync_triple(data: dict) -> dict:
    count("sync_triple")
    return {"n": data["n"] * 3}


@component(name="a.pair")
async def pair(data: dict) -> dict:
    """Inline sub-steps from async code: two awaited together, one sync, with output."""
    flowkit.progress("starting", 0.1)
    one, two = await asyncio.gather(add_one(data), double(data))
    flowkit.emit(f"sum {one['n'] + two['n']}")
    three = sync_triple(data)
    return {"n": one["n"] + two["n"] + three["n"]}


@component(name="a.asker")
async def asker(data: dict) -> dict:
    """A sub-step, then a wait for input: the resumed step replays the sub-step."""
    first = await add_one(data)
    extra = flowkit.wait_for_input("extra", {"k": fields.Integer(required=True)})
    return {"n": first["n"] + extra["k"]}


@component(name="a.ask_item")
async def ask_item(i: int) -> int:
    return flowkit.wait_for_input(f"item-{i}", {"k": fields.Integer(required=True)})["k"]


@component(name="a.asking_sub")
async def asking_sub(data: dict) -> dict:
    return {"k": flowkit.wait_for_input("k")}


@component(name="a.asks_in_a_group")
async def asks_in_a_group(data: dict) -> dict:
    """Its sub-step waits inside an asyncio.TaskGroup, which wraps what its tasks raise."""
    async with asyncio.TaskGroup() as group:
        asked = group.create_task(asking_sub(data))
    return asked.result()


@component(name="a.emits_in_a_group")
async def emits_in_a_group(data: dict) -> dict:
    """Emits from a task of an asyncio.TaskGroup until its run is cancelled: the emit raises
    RunCancelled, which the group wraps."""
    async def ticking() -> None:
        count("ticking")
        while True:
            flowkit.emit("tick")
            await asyncio.sleep(0.05)

    async with asyncio.TaskGroup() as group:
        group.create_task(ticking())
    return {}


@component(name="a.listener")
async def listener(data: dict) -> dict:
    """A sub-step, a wait for an event, then a sleep: each pause lets the worker go, and
    each resumption replays what came before from its checkpoints."""
    first = await add_one(data)
    paid = flowkit.wait_for_event(f"paid:{flowkit.context().run_id}")
    flowkit.sleep(0.5)
    count("after_sleep")
    return {"n": first["n"] + paid["amount"]}


@component(name="a.flaky")
async def flaky(data: dict) -> dict:
    if count("flaky") < 3:
        raise Flaky("not yet")
    return {"n": data["n"], "tries": 3}


@component(name="a.sleeper")
async def sleeper(data: dict) -> dict:
    """Sleeps long; a cancelled coroutine leaves a mark in its ``finally``."""
    count("sleeper")
    try:
        await asyncio.sleep(60)
    finally:
        mark("sleeper_stopped")
    return data


@component(name="a.failing_sub")
async def failing_sub(data: dict) -> dict:
    await asyncio.sleep(0.05)
    raise Flaky("this sub-step failed")


@component(name="a.gatherer")
async def gatherer(data: dict) -> dict:
    """Two sub-steps gathered: one fails while the other still runs."""
    slow, _ = await asyncio.gather(sleeper(data), failing_sub(data))
    return slow


@component(name="a.split")
async def split(data: dict) -> list:
    return list(range(data["n"]))


@component(name="a.square")
async def square(x: int) -> int:
    count(f"square-{x}")
    loop = f"{os.getpid()}:{id(asyncio.get_running_loop())}"
    get_store().redis.sadd(f"aloops:{flowkit.context().run_id}", loop)
    await asyncio.sleep(1.0)
    return x * x


@component(name="a.total")
async def total(xs: list) -> dict:
    return {"n": sum(xs)}


@component(name="a.agent")
async def agent(data: dict) -> object:
    await asyncio.sleep(0.01)
    seen = data.get("seen", 0) + 1
    if seen >= 3:
        return {"n": seen}
    return continue_with(agent, {"seen": seen})


@component(name="a.join")
async def join(branches: list) -> dict:
    return {"n": sum(b["n"] for b in branches)}


@component(name="a.cached")
async def cached(data: dict) -> dict:
    get_store().redis.incr(f"acached:{data['key']}")
    return {"key": data["key"]}


number = {"n": fields.Integer(required=True)}


@component(name="a.forgets_await")
def forgets_await(data: dict) -> dict:
    """The usual mistake: a sync step calling an async component without await (a negative
    ``n``: its result thrown away, the step returning without it)."""
    if data["n"] < 0:
        add_one(data)
        return {"n": data["n"]}
    return {"n": add_one(data)}


@component(name="a.slow_first_call")
async def slow_first_call(data: dict) -> dict:
    """A sub-step whose first call in a run outlasts its 0.5 s timeout."""
    if count("slow_first_call") == 1:
        await asyncio.sleep(5)
    return {"n": data["n"] + 1}


@component(name="a.retries_slow_sub_step")
async def retries_slow_sub_step(data: dict) -> dict:
    out = await slow_first_call.timeout(0.5).retry(
        attempts=2, backoff=flowkit.exponential(0.05, 0.05), jitter=False)(data)
    flowkit.emit("the step goes on")
    return out


@component(name="a.half_then_whole")
async def half_then_whole(data: dict) -> str:
    """Streams its answer (an LLM call does), cut off half-way the first time a run asks."""
    flowkit.emit("Half ")
    if count("half_then_whole") == 1:
        raise ConnectionError("the stream was cut off")
    flowkit.emit("and whole.")
    return "answer"


@component(name="a.streams_around_a_retried_sub_step")
async def streams_around_a_retried_sub_step(data: dict) -> dict:
    flowkit.emit("Intro. ")
    text = await half_then_whole.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01),
                                       jitter=False)(data)
    return {"text": text}


@component(name="a.counted")
async def counted(data: dict) -> dict:
    count("counted")
    return data


#: The tasks a.leaves_a_task_running left running (kept: a task nobody holds may be collected).
_LEFT_RUNNING: list[asyncio.Task] = []


@component(name="a.leaves_a_task_running")
async def leaves_a_task_running(data: dict) -> dict:
    """Starts a task that calls a component once this step's attempt has ended."""
    ctx = flowkit.context()
    store = get_store()

    async def later() -> None:
        while not store.redis.exists(f"agate:{ctx.run_id}"):  # the test opens it once the run ended
            await asyncio.sleep(0.02)
        try:
            await counted(data)
            store.redis.set(f"amark:{ctx.run_id}:late_call_ran", 1)
        except flowkit.RunCancelled as refused:
            store.redis.set(f"amark:{ctx.run_id}:late_call_refused", str(refused))

    _LEFT_RUNNING.append(asyncio.get_running_loop().create_task(later()))
    return {"ok": True}


@component(name="a.naps")
async def naps(data: dict) -> dict:
    await asyncio.sleep(0.05)
    return {"napped": data["n"]}


@component(name="a.starts_a_child")
async def starts_a_child(data: dict) -> dict:
    """Starts a run of a.naps (an async step, on this queue) and waits for its result:
    awaited, or blocking this event loop (refused)."""
    child = WORKFLOWS_BY_QUEUE[data["queue"]]["napping"].start({"n": data["n"]})
    if data["awaits"]:
        return await child.result_async(30)
    try:
        return child.result(30)
    except RuntimeError as refused:
        return {"refused": str(refused)}


@component(name="a.stubborn_sub")
async def stubborn_sub(data: dict) -> dict:
    """Swallows the cancellation of its timeout and goes on to call a component."""
    with contextlib.suppress(asyncio.CancelledError):  # runs on past its deadline
        await asyncio.sleep(5)
    return await add_one(data)  # refused: its deadline passed


@component(name="a.calls_stubborn")
async def calls_stubborn(data: dict) -> dict:
    try:
        return await stubborn_sub.timeout(0.3)(data)
    except flowkit.StepTimeout:
        return {"timed_out": True}


@component(name="a.deaf")
async def deaf(data: dict) -> dict:
    """Swallows every cancellation (as a retry helper that catches it does) until the test
    opens its gate."""
    r, run_id = get_store().redis, flowkit.context().run_id
    while not r.exists(f"agate:{run_id}"):
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.02)
    mark("deaf_ended")
    return data


@component(name="a.blocks")
async def blocks(data: dict) -> dict:
    """Blocks its event loop (a sync call in async code) past its 0.3 s timeout."""
    count("blocks")
    time.sleep(0.6)
    return data


def build(queue: str) -> dict[str, flowkit.Workflow]:
    def wf(name: str, steps: list, **kw) -> flowkit.Workflow:
        return flowkit.Workflow(f"{name}_{queue}", steps, queue=queue, **kw)

    return {
        "sequence": wf("async_sequence", [add_one, pair, double], input_schema=number),
        "branches": wf(
            "async_branches",
            [add_one, parallel(double, [add_one, sync_triple]), join],
            input_schema=number,
        ),
        "fanned": wf("async_fanned", [split, fan_out(square), total], input_schema=number),
        "batched": wf(
            "async_batched", [split, fan_out(square, batch=5), total], input_schema=number
        ),
        "looping": wf("async_looping", [agent]),
        "asking": wf("async_asking", [asker], input_schema=number),
        "asking_items": wf("async_asking_items", [split, fan_out(ask_item, batch=3), total],
                           input_schema=number),
        "asking_in_a_group": wf("async_asking_in_a_group", [asks_in_a_group]),
        "emitting_in_a_group": wf("async_emitting_in_a_group", [emits_in_a_group]),
        "listening": wf("async_listening", [listener], input_schema=number),
        "retrying": wf(
            "async_retrying",
            [flaky.retry(attempts=3, backoff=flowkit.exponential(0.05, 0.1))],
            input_schema=number,
        ),
        "timing_out": wf("async_timing_out", [sleeper.timeout(1)]),
        "blocking": wf("async_blocking", [blocks.timeout(0.3)]),
        "deaf": wf("async_deaf", [deaf.timeout(0.3)]),
        "stubborn": wf("async_stubborn", [calls_stubborn], input_schema=number),
        "cancelling": wf("async_cancelling", [sleeper]),
        "caching": wf("async_caching", [cached.cache(ttl=60)]),
        "forgetting": wf("async_forgetting", [forgets_await], input_schema=number),
        "gathering": wf("async_gathering", [gatherer]),
        "sub_step_retried": wf("async_sub_step_retried", [retries_slow_sub_step],
                               input_schema=number),
        "leaving_a_task": wf("async_leaving_a_task", [leaves_a_task_running]),
        "napping": wf("async_napping", [naps]),
        "starting_a_child": wf("async_starting_a_child", [starts_a_child]),
        "sub_step_restreamed": wf("async_sub_step_restreamed",
                                  [streams_around_a_retried_sub_step]),
    }


WORKFLOWS = {pool: build(queue) for pool, queue in QUEUES.items()}
WORKFLOWS_BY_QUEUE = {QUEUES[pool]: workflows for pool, workflows in WORKFLOWS.items()}
