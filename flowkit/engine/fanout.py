"""Fan-out: one step per item of the list the previous step produced at run time.

``flowkit.fan_out`` replaces itself with a chord: a group of the items' steps, joined
into the list of their outputs, in order. With ``fan_out(component, batch=n)`` each task
of the group runs ``n`` items at once (threads; greenlets on a gevent worker). Every
item is still its own step: its own checkpoint, lease, retries, events and trace span.
What the batch saves is Celery's per-task cost (a message published, received and
acknowledged, a chord counter), which dominates a fan-out of many short I/O-bound calls.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import chord, group
from celery.exceptions import Ignore, Reject

from ..coroutines import gevent_patched
from ..errors import StoreUnavailable
from ..serialization import loads
from ..store import get_store
from .canvas import replacement, result_options, routed, step_queue, step_signature, with_priority
from .drain import draining
from .executor import fail_run, run_step
from .heartbeat import worker_id
from .paths import continuation_of, item_key


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
    # items checkpointed already (a continued run) are not sent again: they join as stored
    stored = store.checkpoints_of(run_id, [item_key(base, i, component) for i in range(len(items))])
    known = {str(i): loads(out) for i, out in enumerate(stored) if out is not None}
    # an item whose loop went on is not done: sent again, it replays its decisions to where
    # it was (its first decision was joined as its output)
    known = {i: out for i, out in known.items() if continuation_of(out) is None}
    if len(known) == len(items):
        return [known[str(i)] for i in range(len(items))]
    if batch <= 1:
        order = [i for i in range(len(items)) if str(i) not in known]
        header = group(
            step_signature(component, run_id, item_key(base, i, component), gen, policy,
                           (items[i],), run_queue=queue)
            for i in order
        )
        # Replacing with a bare group would join through celery.accumulate on the worker's
        # default queue, which a worker serving only the run's queue never consumes.
        join = task.app.signature("flowkit.merge", kwargs={"known": known, "order": order,
                                                           "run_id": run_id, "gen": gen},
                                  **routed(queue), **result_options())
    else:
        firsts = [first for first in range(0, len(items), batch)
                  if any(str(i) not in known for i in range(first, min(first + batch, len(items))))]
        order = [i for first in firsts for i in range(first, min(first + batch, len(items)))]
        header = group(
            task.app.signature(
                "flowkit.fan_out_batch", args=(items[first:first + batch],),
                kwargs={"run_id": run_id, "base": base, "first": first, "gen": gen,
                        "component": component, "policy": policy},
                queue=step_queue(component, policy, queue), **result_options(),
            )
            for first in firsts
        )
        known = {i: out for i, out in known.items() if int(i) not in order}
        join = task.app.signature("flowkit.gather", kwargs={"known": known, "order": order,
                                                            "run_id": run_id, "gen": gen},
                                  **routed(queue), **result_options())
    sig = with_priority(chord(header, join), task.request.delivery_info)
    return task.replace(replacement(sig, task.request))


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
    outcomes = _at_once([
        functools.partial(run_step, None, component, item, run_id=run_id, key=key, gen=gen,
                          policy=policy, begun=(token, begin))
        for item, (key, token), begin in zip(items, steps, begins, strict=True)
    ])
    errors = [exc for _, exc in outcomes if exc is not None]
    # one item's lost Redis connection hands the whole batch back: its finished items
    # are checkpointed, so the redelivered batch runs only the rest
    for exc in errors:
        if isinstance(exc, Reject):
            raise exc
    if errors:  # the run failed, was cancelled or restarted: its steps' events say why
        raise errors[0]
    return [value for value, _ in outcomes]


def _at_once(calls: list[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
    """Each call's value or error, the calls run at once: a greenlet each on a gevent
    worker (a pool of "threads" there is greenlets too, plus a Thread object, a work
    queue and locks per item: about 70 us of CPU more per item), else a thread each."""
    if gevent_patched():
        import gevent  # only ever reached in a gevent-patched process

        # each greenlet ends with its outcome, not an exception: gevent's hub printed a
        # traceback ("failed with Ignore") for every item that paused, or was a duplicate
        greenlets = [gevent.spawn(_outcome, call) for call in calls]
        gevent.joinall(greenlets)
        return [g.value for g in greenlets]
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="flowkit-batch") as pool:
        futures = [pool.submit(call) for call in calls]
    return [(None, exc) if (exc := f.exception()) is not None else (f.result(), None)
            for f in futures]


def _outcome(call: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return call(), None
    except BaseException as exc:  # noqa: BLE001 - handed to the batch, as a future's is
        return None, exc


def gather(batches: list[list[Any]], known: dict[str, Any] | None = None,
           order: list[int] | None = None) -> list[Any]:
    """The outputs of a batched fan-out's items, in order, as one list (with the stored
    outputs of the batches a continued run did not send again)."""
    flat = [output for batch in batches for output in batch]
    return merge(flat, known, order) if known else flat


def merge(results: list[Any], known: dict[str, Any], order: list[int]) -> list[Any]:
    """``flowkit.merge``: outputs in order: the stored ones (``known``, by index) with those
    of the branches or items that ran (``results``, for the indexes in ``order``)."""
    ran = dict(zip(order, results, strict=True))
    return [known[str(i)] if str(i) in known else ran[i] for i in range(len(known) + len(ran))]
