"""Fan-out: one step per item of the list the previous step produced at run time.

``flowkit.fan_out`` replaces itself with a chord: a group of the items' steps, joined
into the list of their outputs, in order. With ``fan_out(component, batch=n)`` each task
of the group runs ``n`` items at once (threads; greenlets on a gevent worker). Every
item is still its own step: its own checkpoint, lease, retries, events and trace span.
What the batch saves is Celery's per-task cost (a message published, received and
acknowledged, a chord counter), which dominates a fan-out of many short I/O-bound calls.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import chord, group
from celery.exceptions import Ignore, Reject

from ..errors import StoreUnavailable
from ..store import get_store
from .canvas import result_options, routed, step_queue, step_signature
from .drain import draining
from .executor import fail_run, run_step
from .heartbeat import worker_id


def item_key(base: str, index: int, component: str) -> str:
    """``1`` -> ``1[3]:ask``: the step key of item 3 of the fan-out at path ``1``."""
    return f"{base}[{index}]:{component}"


def fan_out(task, items: Any, *, run_id: str, key: str, gen: int, component: str,
            policy: dict | None = None, batch: int = 1) -> Any:
    """Replace itself with one step per item of the list the previous step produced."""
    if not isinstance(items, list):
        fail_run(run_id, gen, key, f"fan_out over {component} needs a list, got {type(items).__name__}")
        raise Ignore()
    if not items:
        return []
    store = get_store()
    store.touch(run_id, worker_id(), time.time())
    base = key.partition(":")[0]
    queue = store.run_fields(run_id, "queue")[0] or None
    if batch <= 1:
        header = group(
            step_signature(component, run_id, item_key(base, i, component), gen, policy, (item,),
                           run_queue=queue)
            for i, item in enumerate(items)
        )
        # Replacing with a bare group would join through celery.accumulate on the worker's
        # default queue, which a worker serving only the run's queue never consumes.
        join = task.app.signature("celery.accumulate", kwargs={"index": 0}, **routed(queue))
    else:
        header = group(
            task.app.signature(
                "flowkit.fan_out_batch", args=(items[first:first + batch],),
                kwargs={"run_id": run_id, "base": base, "first": first, "gen": gen,
                        "component": component, "policy": policy},
                queue=step_queue(component, policy, queue), **result_options(),
            )
            for first in range(0, len(items), batch)
        )
        join = task.app.signature("flowkit.gather", **routed(queue), **result_options())
    return task.replace(chord(header, join))


def fan_out_batch(items: list, *, run_id: str, base: str, first: int, gen: int, component: str,
                  policy: dict | None = None) -> list:
    """Items ``first`` .. ``first + len(items) - 1`` of a fan-out, each as its own step, at once."""
    if draining():  # received after SIGTERM: another worker takes it (engine.drain)
        raise Reject("worker is draining", requeue=True)
    steps = [(item_key(base, first + i, component), uuid.uuid4().hex) for i in range(len(items))]
    try:  # every item's checkpoint lookup and lease in one round trip
        begins = get_store().begin_steps(run_id, steps, gen, worker_id(), time.time(), component)
    except StoreUnavailable as exc:
        raise Reject(exc, requeue=True) from exc
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="flowkit-batch") as pool:
        futures = [
            pool.submit(run_step, None, component, item, run_id=run_id, key=key, gen=gen,
                        policy=policy, begun=(token, begin))
            for item, (key, token), begin in zip(items, steps, begins, strict=True)
        ]
    errors = [exc for f in futures if (exc := f.exception()) is not None]
    # one item's lost Redis connection hands the whole batch back: its finished items
    # are checkpointed, so the redelivered batch runs only the rest
    for exc in errors:
        if isinstance(exc, Reject):
            raise exc
    if errors:  # the run failed, was cancelled or restarted: its steps' events say why
        raise errors[0]
    return [f.result() for f in futures]


def gather(batches: list[list[Any]]) -> list[Any]:
    """The outputs of a batched fan-out's items, in order, as one list."""
    return [output for batch in batches for output in batch]
