"""The step running now, as a component's code sees it.

Inside a run, the engine makes each attempt of a step the current step of its thread
(a :class:`flowkit.StepContext`, see :mod:`flowkit.engine.step`); the functions here
talk to it. Outside a run, :func:`progress` and :func:`emit` do nothing and
:func:`is_cancelled` is False, so components stay plain, unit-testable functions.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Protocol

from .errors import FlowkitError


class RunningStep(Protocol):
    """What the engine's step context offers the definitions layer."""

    def progress(self, message: str, fraction: float | None, eta: float | None) -> str: ...

    def emit(self, chunk: Any) -> str: ...

    def is_cancelled(self) -> bool: ...

    def call(self, component: Any, args: tuple, kwargs: dict) -> Any:
        """A component called inside this step: a checkpointed sub-step."""
        ...


_current: ContextVar[Any] = ContextVar("flowkit_step", default=None)


def current() -> Any:
    """The step running in this thread (a :class:`flowkit.StepContext`), or None."""
    return _current.get()


def context() -> Any:
    """The running step's context (a :class:`flowkit.StepContext`); raises outside a run."""
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


def activate(step: RunningStep | None) -> Token:
    return _current.set(step)


def deactivate(token: Token) -> None:
    _current.reset(token)
