"""Workflows the crash tests run, with side effects counted in Redis across processes.

``chaos:started:<run>:<step>`` counts bodies that began, ``chaos:finished:...`` bodies
that returned, and ``chaos:rerun:<run>`` bodies that began although their step was
already checkpointed (the one thing that must never happen).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time

from celery import signals
from marshmallow import fields

import flowkit
from flowkit import component, fan_out, parallel
from flowkit.engine.heartbeat import worker_id
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
    _hold(ctx)
    _finished(ctx)
    return {**data, "n": data["n"] + 1}


def _hold(ctx: flowkit.StepContext) -> None:
    r = get_store().redis
    r.rpush(f"chaos:waiting:{ctx.run_id}", dumps({"attempt": ctx.attempt, "worker": worker_id()}))
    deadline = time.monotonic() + 120
    while r.blpop(f"chaos:gate:{ctx.run_id}", timeout=1) is None:  # under the socket timeout
        if flowkit.is_cancelled():  # cooperative: handed over, restarted or cancelled
            raise flowkit.RunCancelled("stopped waiting")
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")


@component(name="chaos.brief")
def brief(data: dict) -> dict:
    """A short step that says where it runs (``chaos:began:<run>``), then waits for the
    test's word (``chaos:go:<run>``): the test does something meanwhile (a SIGTERM, say)."""
    ctx = _began()
    r = get_store().redis
    r.rpush(f"chaos:began:{ctx.run_id}", dumps({"attempt": ctx.attempt, "worker": worker_id()}))
    if r.blpop(f"chaos:go:{ctx.run_id}", timeout=60) is None:
        raise TimeoutError("the test never said go")
    _finished(ctx)
    return {**data, "n": data["n"] + 1}


@component(name="chaos.gil")
def gil(data: dict) -> dict:
    """A step that holds the GIL for ``seconds`` (one C call that never releases it, as
    ``json.loads`` of a large document or a backtracking regex would): nothing else of its
    process runs meanwhile, neither a heartbeat thread nor, on gevent, another greenlet.
    ``first_only``: only its first attempt holds it (a restart's returns at once)."""
    ctx = _began()
    if ctx.attempt == 1 or not data.get("first_only"):
        ctypes.PyDLL(None).usleep(int(data["seconds"] * 1_000_000))
    _finished(ctx)
    return {**data, "n": data["n"] + 1}


@component(name="chaos.program")
def program(data: dict) -> dict:
    """Runs a program (ffmpeg, pandoc, a browser: here ``sleep 60``) on its first attempt,
    after saying where (``chaos:waiting:<run>``); a later attempt's returns at once. With
    ``shell``, through a shell that runs it as a child of its own."""
    ctx = _began()
    seconds = "60" if ctx.attempt == 1 else "0"
    running = subprocess.Popen(f"sleep {seconds}; true", shell=True) if data.get("shell") \
        else subprocess.Popen(["sleep", seconds])
    get_store().redis.rpush(f"chaos:waiting:{ctx.run_id}",
                            dumps({"attempt": ctx.attempt, "worker": worker_id(),
                                   "program": running.pid}))
    if running.wait():
        raise subprocess.CalledProcessError(running.returncode, running.args)
    _finished(ctx)
    return {**data, "n": data["n"] + 1}


@component(name="chaos.broken")
def broken(data: dict) -> dict:
    _began()
    raise RuntimeError("the model returned nonsense")


@component(name="chaos.items")
def items(data: dict) -> list:
    ctx = _began()
    _finished(ctx)
    return list(range(data["n"]))


@component(name="chaos.item")
def item(x: int) -> int:
    """Items 0 and 1 return at once; the others hold like ``chaos.hold``."""
    ctx = _began()
    if x >= 2:
        _hold(ctx)
    _finished(ctx)
    return x * 10


ten = flowkit.Workflow("chaos.ten", [work] * 10)
#: The same, its steps retried: their bodies count side effects in Redis themselves, and a
#: Redis node's crash fails those calls as it would any user code's (not flowkit's own,
#: which abandon the step to the reaper).
ten_retried = flowkit.Workflow(
    "chaos.ten_retried", [work.retry(attempts=6, backoff=flowkit.exponential(0.2, 2))] * 10)
#: Ten steps whose fifth holds until the test opens its gate: a failover test's runs are
#: still under way however long its failovers take.
ten_held = flowkit.Workflow("chaos.ten_held", [work] * 4 + [hold] + [work] * 5)
batch_held = flowkit.Workflow("chaos.batch_held", [items, fan_out(item, batch=4)])
held = flowkit.Workflow("chaos.held", [work, hold, work])
#: A short step, then a long one: the long one may follow inline, in the same task.
brief_then_hold = flowkit.Workflow("chaos.brief_then_hold", [brief, hold])
doomed = flowkit.Workflow("chaos.doomed", [work, broken])
held_gil = flowkit.Workflow("chaos.held_gil", [work, gil])
running_a_program = flowkit.Workflow("chaos.running_a_program", [work, program, work])


# -- a worker lost between two steps ------------------------------------------------


@component(name="chaos.handed_on")
def handed_on(data: dict) -> dict:
    ctx = _began()
    _finished(ctx)
    return {**data, "n": data["n"] + 1}


handoff = flowkit.Workflow("chaos.handoff", [work, handed_on])


#: Armed by a test before its run starts (a flag set after the start came too late under
#: load: the step it waits for was over in milliseconds and the worker lived on).
DIE_BEFORE_PUBLISH = "chaos:die-before-publish"


@signals.before_task_publish.connect
def _die_before_handing_on(sender=None, body=None, **_):
    """SIGKILL this worker as it is about to send a run's next step, when the test asks:
    the previous step is checkpointed, the next message never leaves."""
    if sender != handed_on.task_name or not isinstance(body, (list, tuple)):
        return
    run_id = body[1].get("run_id")
    if run_id and get_store().redis.delete(DIE_BEFORE_PUBLISH):
        os.kill(os.getpid(), signal.SIGKILL)


@signals.task_received.connect
def _die_on_taking_it(sender=None, request=None, **_):
    """SIGKILL this worker as its consumer takes a message of the task the test names
    (``chaos:die-on-taking:<task>``) from the queue: the message left the queue (on Redis,
    for the broker's unacked hash, which gives it back after the visibility timeout, an
    hour), no step began."""
    run_id = (request.kwargs or {}).get("run_id") if request is not None else None
    store = get_store()
    if not (run_id and store.redis.delete(f"chaos:die-on-taking:{request.name}")):
        return
    # a next step's hand-off is written by a thread of the process that published it (this
    # one): dead before it is, the run would be one lost between steps, another test's case
    deadline = time.monotonic() + 10
    while request.name == handed_on.task_name and \
            store.redis.hget(store.keys.run(run_id), "handoff_at") is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the run's next message was never recorded as handed off")
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGKILL)


# -- blue/green: the same workflow at two versions, one queue each -------------------

#: Set per worker process (CHAOS_VERSION) to play the code of one deployment colour.
colour = flowkit.Workflow(
    "chaos.colour", [work, hold, work], version=os.environ.get("CHAOS_VERSION", "1")
)


# -- a run that waits for a person; a long run with every shape --------------------------


@component(name="chaos.ask")
def ask(data: dict) -> dict:
    """Pauses for input ``approval`` (the worker slot is free meanwhile)."""
    answer = flowkit.wait_for_input("approval", schema={"ok": fields.Boolean(required=True)})
    return {**data, "n": data["n"] + 1, "ok": answer["ok"]}


asking = flowkit.Workflow("chaos.asking", [work, ask, work])


@component(name="chaos.spread")
def spread(data: dict) -> list:
    ctx = _began()
    _finished(ctx)
    return [{**data, "i": i} for i in range(3)]


@component(name="chaos.gathered")
def gathered(outputs: list) -> dict:
    ctx = _began()
    _finished(ctx)
    first = outputs[0][0] if isinstance(outputs[0], list) else outputs[0]
    return {k: v for k, v in first.items() if k != "i"}


@component(name="chaos.think")
def think(data: dict) -> object:
    """An agent loop: decides to go on twice, then stops."""
    ctx = _began()
    time.sleep(data.get("pause", 0.05))
    _finished(ctx)
    turns = data.get("turns", 0)
    if turns < 2:
        return flowkit.continue_with(think, {**data, "turns": turns + 1})
    return {k: v for k, v in data.items() if k != "turns"}


#: 18 steps: a chain, a parallel block, a fan-out and an agent loop.
long_run = flowkit.Workflow("chaos.long", [
    work, work, work, parallel(work, [work, work]), gathered, spread, fan_out(work),
    gathered, think, work, work, work,
])


# -- flow control ------------------------------------------------------------------------


@component(name="chaos.tenant_step")
def tenant_step(data: dict) -> dict:
    """Records, as it starts, how many runs of its tenant are active: inside their step (a
    counter) and holding a slot (the store's own count)."""
    ctx = flowkit.context()
    store = get_store()
    r = store.redis
    inside = r.incr(f"chaos:inside:{data['tenant']}")
    holding = r.zcard(store.keys.slots(f"chaos.tenants:{data['tenant']}")[0])
    r.rpush(f"chaos:seen:{data['tenant']}", dumps({"run": ctx.run_id, "inside": inside,
                                                    "holding": holding, "at": time.time()}))
    time.sleep(data.get("pause", 0.01))
    r.decr(f"chaos:inside:{data['tenant']}")
    return data


tenants = flowkit.Workflow("chaos.tenants", [tenant_step],
                           concurrency=flowkit.Concurrency(limit=2, key="tenant"))
#: The long hold step, two runs per tenant at most.
tenant_held = flowkit.Workflow("chaos.tenant_held", [work, hold, work],
                               concurrency=flowkit.Concurrency(limit=2, key="tenant"))


@component(name="chaos.pages")
def pages(data: dict) -> list:
    return [{"domain": d, "i": i} for i in range(data["per_domain"]) for d in data["domains"]]


@component(name="chaos.fetch_page")
def fetch_page(page: dict) -> dict:
    """Marks its start and end per domain, with the worker process it ran in."""
    r = get_store().redis
    r.rpush(f"chaos:pages:{page['domain']}", dumps({"at": time.time(), "d": 1,
                                                     "worker": worker_id()}))
    time.sleep(0.2)
    r.rpush(f"chaos:pages:{page['domain']}", dumps({"at": time.time(), "d": -1,
                                                     "worker": worker_id()}))
    return page


@component(name="chaos.ping")
def ping(item: dict) -> dict:
    get_store().redis.rpush("chaos:pings", dumps({"at": time.time(), "worker": worker_id()}))
    return item


crawl = flowkit.Workflow("chaos.crawl", [pages, fan_out(fetch_page.concurrency(3, key="domain"))])
pinging = flowkit.Workflow("chaos.pinging", [pages, fan_out(ping.rate_limit("10/s"))])
#: One quick step: what the schedule test fires.
tick = flowkit.Workflow("chaos.tick", [work])
#: A schedule declared in the code, stored when beat starts (it fires on New Year only).
yearly = flowkit.Workflow("chaos.yearly", [work], schedules=[
    flowkit.Schedule(cron="0 0 1 1 *", input={"n": 0}, id="chaos-yearly")])
