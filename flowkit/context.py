"""The run context of the step executing now, and the calls a component makes on it.

Outside a run, :func:`progress` and :func:`emit` do nothing and :func:`is_cancelled`
is False, so components stay plain, unit-testable functions.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import redis

from . import events
from .errors import FlowkitError, NotFound, RunCancelled, StoreUnavailable
from .serialization import dumps_bounded, loads
from .store import Store

_current: ContextVar[StepContext | None] = ContextVar("flowkit_step", default=None)


@dataclass
class StepContext:
    """What a running step knows about its run. Read it with :func:`context`."""

    run_id: str
    step: str
    gen: int
    attempt: int
    token: str
    component: str
    store: Store = field(repr=False)
    started: float = field(default_factory=time.monotonic)
    #: Set when this attempt timed out: whatever it still sends is refused.
    abandoned: bool = False
    _calls: int = field(default=0, repr=False)
    _input: Any = field(default=None, repr=False)
    #: LLM tokens used by the step's calls so far, over all its attempts (``prompt``,
    #: ``completion``, ``total``); ``step.completed`` reports them.
    tokens: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def input(self) -> Any:
        """The run's validated input."""
        if self._input is None:
            raw = self.store.redis.hget(self.store.keys.run(self.run_id), "input")
            self._input = loads(raw) if raw else None
        return self._input

    def output_of(self, step: str) -> Any:
        """Output of an earlier step, by step key (``"0:research"``) or component name."""
        checkpoints = self.store.checkpoints(self.run_id)
        if step in checkpoints:
            return loads(checkpoints[step])
        matches = [k for k in checkpoints if k.partition(":")[2] == step]
        if len(matches) == 1:
            return loads(checkpoints[matches[0]])
        if matches:
            raise FlowkitError(f"{step!r} ran as several steps ({', '.join(matches)}); use a step key.")
        raise NotFound(f"No completed step {step!r} in run {self.run_id}.")

    def next_call_key(self, component: str) -> str:
        key = f"{self.step}/{self._calls}:{component}"
        self._calls += 1
        return key

    def send(self, type_: str, **fields: Any) -> str:
        if self.abandoned:
            raise RunCancelled(f"attempt {self.attempt} of step {self.step} was abandoned")
        event = events.make(type_, self.run_id, step=self.step, attempt=self.attempt, **fields)
        dumps_bounded(event, f"a {type_} event")
        with unavailable_store():
            event_id = self.store.emit(self.run_id, self.gen, event)
        if event_id is None:
            raise RunCancelled(f"Run {self.run_id} was cancelled or restarted; stop step {self.step}.")
        return event_id

    def progress(self, message: str, fraction: float | None = None, eta: float | None = None) -> str:
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
            if eta is None and fraction > 0:
                elapsed = time.monotonic() - self.started
                eta = round(elapsed * (1 - fraction) / fraction, 3)
        return self.send(events.STEP_PROGRESS, message=message, fraction=fraction, eta=eta)

    def emit(self, chunk: Any) -> str:
        return self.send(events.STEP_OUTPUT, chunk=chunk)

    def is_cancelled(self) -> bool:
        with unavailable_store():
            state, gen = self.store.redis.hmget(self.store.keys.run(self.run_id), "state", "gen")
        return state not in ("queued", "running") or gen != str(self.gen)


@contextmanager
def unavailable_store():
    """Turn Redis connection failures inside a step into StoreUnavailable."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable(f"flowkit's Redis is unreachable: {exc}") from exc


def current() -> StepContext | None:
    """The step running in this thread, or None outside a run."""
    return _current.get()


def context() -> StepContext:
    """The running step's context; raises outside a run."""
    ctx = _current.get()
    if ctx is None:
        raise FlowkitError("flowkit.context() is only available inside a step of a run.")
    return ctx


def progress(message: str, fraction: float | None = None, eta: float | None = None) -> None:
    """Report progress of the current step (``fraction`` in 0..1; eta estimated when absent)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.progress(message, fraction, eta)


def emit(chunk: Any) -> None:
    """Stream a chunk of output (text or JSON) to the run's event stream."""
    ctx = _current.get()
    if ctx is not None:
        ctx.emit(chunk)


def is_cancelled() -> bool:
    """True when the current run was cancelled (or restarted elsewhere): stop soon."""
    ctx = _current.get()
    return ctx.is_cancelled() if ctx is not None else False


def activate(ctx: StepContext | None):
    return _current.set(ctx)


def deactivate(token) -> None:
    _current.reset(token)
