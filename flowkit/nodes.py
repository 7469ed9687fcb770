"""The shapes a workflow is composed of: steps, sequences, parallel branches, fan-outs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .component import Component
from .errors import ConfigError
from .numbers import is_whole


class Node:
    def components(self) -> Iterator[Component]:
        raise NotImplementedError


@dataclass(frozen=True)
class Step(Node):
    component: Component

    def components(self) -> Iterator[Component]:
        yield self.component


@dataclass(frozen=True)
class Sequence(Node):
    """Each step receives the previous step's output."""

    steps: tuple[Node, ...]

    def components(self) -> Iterator[Component]:
        for step in self.steps:
            yield from step.components()


@dataclass(frozen=True)
class Parallel(Node):
    """Every branch receives the same input; the output is the list of branch outputs."""

    branches: tuple[Node, ...]

    def components(self) -> Iterator[Component]:
        for branch in self.branches:
            yield from branch.components()


@dataclass(frozen=True)
class FanOut(Node):
    """One step per item of the list received; the output is the list of their outputs.
    ``batch`` items share a Celery task (see flowkit.fanout)."""

    component: Component
    batch: int = 1

    def components(self) -> Iterator[Component]:
        yield self.component


def as_node(item: Any) -> Node:
    """A component, a list (a sequence) or a node, as a node."""
    if isinstance(item, Node):
        return item
    if isinstance(item, Component):
        return Step(item)
    if isinstance(item, (list, tuple)):
        if not item:
            raise ConfigError("A sequence of steps cannot be empty.")
        return Sequence(tuple(as_node(i) for i in item))
    raise ConfigError(
        f"{item!r} is not a step: use a @component, a list of steps, parallel(...) or fan_out(...)."
    )


def parallel(*branches: Any) -> Parallel:
    """Run ``branches`` (components or lists of steps) at the same time."""
    if len(branches) < 1:
        raise ConfigError("parallel() needs at least one branch.")
    return Parallel(tuple(as_node(b) for b in branches))


def fan_out(comp: Component, *, batch: int = 1) -> FanOut:
    """Run ``comp`` once per item of the list the previous step returns, in parallel.

    ``batch=n`` runs n items per Celery task, concurrently (threads, or greenlets on a
    gevent worker), each still its own checkpointed step: for many short I/O-bound
    items, such as LLM calls, where one task per item would cost more than the item.
    """
    if not isinstance(comp, Component):
        raise ConfigError("fan_out() takes a component.")
    if not (is_whole(batch) and batch >= 1):
        raise ConfigError(f"fan_out(batch=...) takes a whole number of items >= 1, not {batch!r}.")
    return FanOut(comp, batch)
