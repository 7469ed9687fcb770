"""Compiling a workflow to a Celery canvas.

Sequential steps become a chain, parallel branches a chord joined by ``flowkit.merge``
(never a bare group: see compile_node), a fan-out the ``flowkit.fan_out`` task that replaces itself with a
group at run time (flowkit.engine.fanout), and every canvas ends with ``flowkit.finish``.
Each step's signature carries only the run id, its step key, the run's generation and (when
configured away from the component's defaults) its policy: run state lives in
Redis, so any generation of the canvas can be rebuilt from the workflow.
"""

from __future__ import annotations

from typing import Any

from celery import Signature, chain, chord, group
from celery.backends.redis import RedisBackend
from celery.canvas import _chain, _chord
from kombu.utils.uuid import uuid

from ..component import TASK_PREFIX, Component, lookup
from ..errors import NotFound
from ..nodes import FanOut, Node, Parallel, Sequence, Step
from ..workflow import Workflow
from .broker import fresh_priority, get_app


def _policy_payload(comp: Component) -> dict | None:
    base = lookup(comp.name)
    return None if comp.policy == base.policy else comp.policy.to_dict()


def step_signature(
    component: str, run_id: str, key: str, gen: int, policy: dict | None, args: tuple = (),
    run_queue: str | None = None,
) -> Signature:
    """A step's signature; it goes to the component's queue, else to the run's queue."""
    kwargs: dict[str, Any] = {"run_id": run_id, "key": key, "gen": gen}
    if policy:
        kwargs["policy"] = policy
    options = {**routed(step_queue(component, policy, run_queue)), **result_options()}
    return get_app().signature(lookup(component).task_name, args=args, kwargs=kwargs, **options)


def step_queue(component: str, policy: dict | None, run_queue: str | None) -> str | None:
    """The queue of a step: its policy's, else its component's, else the run's."""
    return (policy or {}).get("queue") or lookup(component).policy.queue or run_queue


#: Options of a signature that ask for more than running it: it must be its own message.
_OWN_MESSAGE = ("chord", "link", "link_error", "group_id", "immutable", "countdown", "eta")


#: The task ending every canvas (flowkit.engine.executor.finish_run).
FINISH = "flowkit.finish"


def inline_step(sig: dict[str, Any], queue: str | None) -> str | None:
    """What a worker that consumed ``queue`` may run itself of ``sig`` (a chain's next
    signature, as a dict): the component's name of a plain step of a component registered
    here, or :data:`FINISH` for the run's end; bound for that same queue, taking the
    previous output as its only argument. None: it must be a message of its own."""
    task = sig.get("task") or ""
    options = sig.get("options") or {}
    if not (task.startswith(TASK_PREFIX) or task == FINISH):
        return None
    if sig.get("subtask_type") or sig.get("args"):
        return None
    if queue is None or (options.get("queue") or get_app().conf.task_default_queue) != queue:
        return None
    if any(options.get(name) for name in _OWN_MESSAGE):
        return None
    if task == FINISH:
        return FINISH
    name = task[len(TASK_PREFIX):]
    try:
        lookup(name)
    except NotFound:
        return None  # another deployment's component: its own workers run it
    return name


def result_options() -> dict[str, bool]:
    """Celery options that bring back result storage where a join needs it.

    Step and finish tasks are declared ``ignore_result=True``: a step's output is its
    checkpoint and a run's output is in its record, so the per-task result (a SET +
    PUBLISH per step) is read by no one. It is a task attribute rather than a signature
    option because the rest of a chain travels in every message. Chords still join: with
    the Redis backend, members hand their outputs to the join through the chord's own
    list (on_chord_part_return) whether or not they store a result. Other backends join
    by reading the members' results, so there every signature stores its result.
    """
    return {} if isinstance(get_app().backend, RedisBackend) else {"ignore_result": False}


def compile_node(node: Node, path: str, run_id: str, gen: int, queue: str | None) -> Signature:
    if isinstance(node, Step):
        comp = node.component
        return step_signature(
            comp.name, run_id, f"{path}:{comp.name}", gen, _policy_payload(comp), run_queue=queue
        )
    if isinstance(node, FanOut):
        comp = node.component
        kwargs = {
            "run_id": run_id,
            "key": f"{path}:{comp.name}",
            "gen": gen,
            "component": comp.name,
            "policy": _policy_payload(comp),
        }
        if node.batch > 1:
            kwargs["batch"] = node.batch
        return get_app().signature("flowkit.fan_out", kwargs=kwargs, **routed(queue))
    if isinstance(node, Parallel):
        # a chord with a join of its own (flowkit.merge), never a bare group: Celery flattens
        # a group inside a group into the outer join ([6, -5, 6] for [6, [6, -5]]), and a
        # branch ending in a group left its join waiting, unbounded, for results steps do
        # not store (the run hung, the worker thread with it)
        branches = [compile_node(branch, f"{path}.{i}", run_id, gen, queue)
                    for i, branch in enumerate(node.branches)]
        return chord(branches, merge_signature({}, list(range(len(branches))), run_id, gen,
                                               queue))
    if isinstance(node, Sequence):
        prefix = f"{path}." if path else ""
        return chain(
            compile_node(child, f"{prefix}{i}", run_id, gen, queue)
            for i, child in enumerate(node.steps)
        )
    raise TypeError(f"cannot compile {node!r}")


def merge_signature(known: dict[str, Any], order: list[int], run_id: str, gen: int,
                    queue: str | None) -> Signature:
    """The join of a parallel block: the branches' outputs in order, ``known`` (branch
    index -> output: checkpointed ones, for a continued run) merged with those that ran
    (``order``: their indexes)."""
    return get_app().signature(
        "flowkit.merge", kwargs={"known": known, "order": order, "run_id": run_id, "gen": gen},
        **routed(queue), **result_options())


def routed(queue: str | None) -> dict[str, str]:
    """Signature options sending a task to ``queue`` (none: the app's default queue)."""
    return {"queue": queue} if queue else {}


def replacement(sig: Signature, request: Any) -> Signature:
    """``sig`` given task ids of its own before ``Task.replace`` gives it the replaced task's
    (``request``'s; it only fills ids not yet set): two tasks under one id are one task to
    Celery's events, so monitors such as Flower showed a fan-out as its join and an agent
    loop's step as the next one (a ``flowkit.fan_out`` was never seen). A chord's id is its
    join's. Kept only where a join waits for the replaced task's own id: a member of a
    group on a result backend other than Redis (Redis joins by the chord's list)."""
    if getattr(request, "group", None) and not isinstance(get_app().backend, RedisBackend):
        return sig
    (sig.body if isinstance(sig, _chord) else sig).set(task_id=uuid())
    return sig


def with_priority(sig: Signature, delivery: dict | None) -> Signature:
    """``sig`` with every message it will publish at the priority of ``delivery`` (a task's
    ``request.delivery_info``, or ``{"priority": n}``): a continued run's later messages
    keep its priority. Unchanged when there is none."""
    priority = (delivery or {}).get("priority")
    if priority is not None:
        for leaf in _leaves(sig):
            leaf.set(priority=priority)
    return sig


def _leaves(sig: Signature):
    """The task signatures of a canvas (chains, groups and chords walked through)."""
    if isinstance(sig, (_chain, group, _chord)):
        for task in sig.tasks:
            yield from _leaves(task)
        if isinstance(sig, _chord) and sig.body is not None:
            yield from _leaves(sig.body)
    else:
        yield sig


def finish_signature(workflow: str, run_id: str, gen: int, queue: str | None) -> Signature:
    """The last task of every canvas: it validates the output and ends the run."""
    return get_app().signature(
        FINISH, kwargs={"run_id": run_id, "gen": gen, "workflow": workflow},
        **routed(queue), **result_options(),
    )


def compile_run(
    root: Sequence, workflow: str, run_id: str, gen: int, queue: str | None = None
) -> Signature:
    """The whole canvas of generation ``gen`` of a run; every task goes to ``queue`` unless its
    component names another, so a run stays on the deployment (colour) that started it."""
    return chain(compile_node(root, "", run_id, gen, queue),
                 finish_signature(workflow, run_id, gen, queue))


def first_canvas(workflow: Workflow, run_id: str, payload: Any, queue: str | None,
                 priority: int = 0, gen: int = 0) -> tuple[Signature, tuple]:
    """Generation ``gen`` of the run's whole canvas and the arguments it is applied to (its
    first step receives ``payload``); a run's ``priority`` (0-9, 9 first) goes with every
    message of it, the default's too: Celery's ``task_default_priority`` applies only to
    the tasks an app registers, and a web process's producer app registers none, so its
    default runs went out with no priority, which the Redis broker reads as the top one
    (continued work's): ahead of priority 1-8 runs and of resumed runs."""
    canvas = compile_run(workflow.root, workflow.name, run_id, gen, queue)
    with_priority(canvas, {"priority": fresh_priority(priority)})
    return canvas, (payload,)


def enqueue(workflow: Workflow, run_id: str, gen: int, payload: Any, queue: str | None,
            priority: int = 0) -> None:
    """Send generation ``gen`` of the run's whole canvas (:func:`first_canvas`).

    Outside a worker, Celery subscribes the sender to the result of each task it sends
    unless told to ignore it: a SUBSCRIBE per run to a result no one reads, and a send that
    waits on the result backend's Redis. The first message says so (the rest of a chain
    travels inside it); other backends join chords by reading results, so they keep them."""
    sig, args = first_canvas(workflow, run_id, payload, queue, priority, gen)
    sig.apply_async(args=args, **({} if result_options() else {"ignore_result": True}))
