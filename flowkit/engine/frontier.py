"""The frontier of a run: the canvas of what remains, compiled from its checkpoints.

Whatever continues a run (a restart, a retry, a drain handover, an answered wait, a
delayed start coming due) enqueues this instead of the whole canvas: a checkpointed
step is never a message again.

- a sequence skips its checkpointed steps and starts at the first that is not, with the
  output of the one before as its input;
- a parallel block sends only its unfinished branches and joins their outputs with the
  stored ones, in order (``flowkit.merge``);
- a fan-out whose items are all checkpointed is done; otherwise it is sent, and sends only
  its missing items (:mod:`.fanout`);
- an agent loop goes on from its last checkpointed decision.

Continued work goes ahead of fresh work on its queue: every message of a frontier carries
:func:`~.broker.continued_priority` (fresh messages carry their run's, lower: canvas.first_canvas).
"""

from __future__ import annotations

import re
from typing import Any

from celery import Signature, chain, chord, group
from celery.canvas import _chain, _chord

from ..nodes import FanOut, Node, Parallel, Sequence, Step
from ..serialization import loads
from ..workflow import Workflow
from .broker import continued_priority, get_app
from .canvas import (
    compile_node,
    finish_signature,
    merge_signature,
    result_options,
    routed,
    step_signature,
    with_priority,
)
from .paths import continuation_key, continuation_of, item_key, step_key

#: A fan-out item's index in a step's path (``2[3]``).
_ITEM = re.compile(r"\[\d+\]")
#: Where a step's key ends and what it keeps within begins: a call or a wait
#: (``0:agent/1:search``, ``2:ask/0:wait:input:ok``), its place in a component's line or
#: rate (``/slot``, ``/rate``). Said in messages only: a component's name may hold a "/"
#: (``billing: charge/card``), so a key is matched against the workflow's steps whole.
_WITHIN = re.compile(r"/(?=\d+:|slot$|rate$)")


def unknown_steps(workflow: Workflow, checkpoints: dict[str, str]) -> list[str]:
    """The steps this run checkpointed (outputs, a step's calls and answered waits) that
    ``workflow`` as this worker has it does not have: its steps changed since the run
    started. Step keys are positional (:mod:`.paths`): a step added before a waiting one
    moved it, and the resumed run ran steps again and asked again for what a person had
    answered, under keys nothing would read."""
    steps, paths = _static_steps(workflow.root, "")
    components: dict[str, list[str]] = {}  # a step's path -> the components there
    for step in steps:
        at, _, name = step.partition(":")
        components.setdefault(at, []).append(name)
    unknown = []
    for key in checkpoints:
        path = key.partition(":")[0]  # a path holds no ":" (a component's name may)
        if "+" in path:  # a continuation: any component; its loop's step must still be there
            known = _ITEM.sub("[]", path.partition("+")[0]) in paths
        else:  # the step, or what it keeps within ("<step>/..."), not cut at any "/": a
            # component's name may hold one, and its runs failed at every resume
            rest = key[len(path) + 1:]
            known = any(rest == name or rest.startswith(f"{name}/")
                        for name in components.get(_ITEM.sub("[]", path), ()))
        if not known:
            unknown.append(_WITHIN.split(key, 1)[0])
    return sorted(set(unknown))


def _static_steps(node: Node, path: str) -> tuple[set[str], set[str]]:
    """The step keys ``node`` at ``path`` makes (a fan-out's items as ``path[]:name``), and
    the paths of its steps (a fan-out's items' as ``path[]``)."""
    if isinstance(node, Step):
        return {step_key(path, node.component.name)}, {path}
    if isinstance(node, FanOut):  # an item may continue too: its loop's path is the item's
        return {f"{path}[]:{node.component.name}"}, {f"{path}[]"}
    children = (node.steps if isinstance(node, Sequence) else node.branches
                if isinstance(node, Parallel) else ())
    if isinstance(node, Sequence):
        prefix = f"{path}." if path else ""
        at = [f"{prefix}{i}" for i in range(len(children))]
    else:
        at = [f"{path}.{i}" for i in range(len(children))]
    steps: set[str] = set()
    paths: set[str] = set()
    for child, child_path in zip(children, at, strict=True):
        more_steps, more_paths = _static_steps(child, child_path)
        steps |= more_steps
        paths |= more_paths
    return steps, paths


class _Done:
    """A node whose output is known from its checkpoints."""

    __slots__ = ("output",)

    def __init__(self, output: Any) -> None:
        self.output = output


def compile_frontier(
    workflow: Workflow, run_id: str, gen: int, value: Any, checkpoints: dict[str, str],
    queue: str | None,
) -> tuple[Signature, Any]:
    """The canvas of what remains of generation ``gen`` (ending with ``flowkit.finish``),
    and the value its first task receives; every message carries the continued priority."""
    plan = _Planner(run_id, gen, checkpoints, queue)
    remaining = plan.node(workflow.root, "", value)
    finish = finish_signature(workflow.name, run_id, gen, queue)
    if isinstance(remaining, _Done):
        canvas, first_input = finish, remaining.output
    else:
        canvas, first_input = chain(remaining, finish), value
    return with_priority(canvas, {"priority": continued_priority()}), first_input


class _Planner:
    def __init__(self, run_id: str, gen: int, checkpoints: dict[str, str], queue: str | None):
        self.run_id, self.gen, self.checkpoints, self.queue = run_id, gen, checkpoints, queue

    def node(self, node: Node, path: str, value: Any) -> _Done | Signature:
        """What remains of ``node`` given its input ``value``: done, or a canvas."""
        if isinstance(node, Sequence):
            return self.sequence(node, path, value)
        if isinstance(node, Parallel):
            return self.parallel(node, path, value)
        if isinstance(node, FanOut):
            return self.fan_out(node, path, value)
        if isinstance(node, Step):
            return self.step(node, path)
        raise TypeError(f"cannot plan {node!r}")

    def sequence(self, node: Sequence, path: str, value: Any) -> _Done | Signature:
        prefix = f"{path}." if path else ""
        for i, child in enumerate(node.steps):
            remaining = self.node(child, f"{prefix}{i}", value)
            if isinstance(remaining, _Done):
                value = remaining.output
                continue
            if i > 0:  # it starts past the sequence's input: it gets what the last done gave
                remaining = self.bound(remaining, value)
            rest = [compile_node(c, f"{prefix}{j}", self.run_id, self.gen, self.queue)
                    for j, c in enumerate(node.steps) if j > i]
            return chain(remaining, *rest) if rest else remaining
        return _Done(value)

    def bound(self, sig: Signature, value: Any) -> Signature:
        """``sig`` receiving ``value`` whatever the task before it returns: its first task
        takes ``value`` as its argument (a canvas of branches gets it from a first task,
        ``flowkit.value``, that only hands it on)."""
        first = sig.tasks[0] if isinstance(sig, _chain) else sig
        if isinstance(first, (_chain, group, _chord)):
            given = get_app().signature("flowkit.value", args=(value,), immutable=True,
                                        kwargs={"run_id": self.run_id, "gen": self.gen},
                                        **routed(self.queue), **result_options())
            return chain(given, sig)
        if first.immutable:
            return sig  # a continuation: it has its own input already
        bound = first.clone(args=(value, *first.args)).set(immutable=True)
        return chain(bound, *sig.tasks[1:]) if isinstance(sig, _chain) else bound

    def parallel(self, node: Parallel, path: str, value: Any) -> _Done | Signature:
        known: dict[str, Any] = {}
        pending: list[tuple[int, Signature]] = []
        for i, branch in enumerate(node.branches):
            remaining = self.node(branch, f"{path}.{i}", value)
            if isinstance(remaining, _Done):
                known[str(i)] = remaining.output
            else:
                pending.append((i, remaining))
        if not pending:
            return _Done([known[str(i)] for i in range(len(node.branches))])
        merge = merge_signature(known, [i for i, _ in pending], self.run_id, self.gen,
                                self.queue)
        return chord([sig for _, sig in pending], merge)

    def fan_out(self, node: FanOut, path: str, value: Any) -> _Done | Signature:
        if isinstance(value, list) and value:
            keys = [item_key(path, i, node.component.name) for i in range(len(value))]
            outputs = [loads(self.checkpoints[key]) if key in self.checkpoints else None
                       for key in keys]
            # an item that continued (an agent loop per item) is done only at its loop's end:
            # the fan-out task sends it again, and it replays its decisions to where it was
            # (its first decision was joined as its output)
            if all(key in self.checkpoints and continuation_of(out) is None
                   for key, out in zip(keys, outputs, strict=True)):
                return _Done(outputs)
        return compile_node(node, path, self.run_id, self.gen, self.queue)

    def step(self, node: Step, path: str) -> _Done | Signature:
        key = step_key(path, node.component.name)
        if key not in self.checkpoints:
            return compile_node(node, path, self.run_id, self.gen, self.queue)
        output = loads(self.checkpoints[key])
        # an agent loop: follow its checkpointed decisions to the first one not yet run
        while (spec := continuation_of(output)) is not None:
            key, _ = continuation_key(key, spec["component"])
            if key not in self.checkpoints:
                sig = step_signature(spec["component"], self.run_id, key, self.gen,
                                     spec.get("policy"), (spec["input"],), run_queue=self.queue)
                return sig.set(immutable=True)  # its input is the decision's, not the chain's
            output = loads(self.checkpoints[key])
        return _Done(output)
