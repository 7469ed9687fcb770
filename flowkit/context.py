"""The step running now, as a component's code sees it.

Inside a run, the engine makes each attempt of a step the current step of its thread
(a :class:`flowkit.StepContext`, see :mod:`flowkit.engine.step`); the functions here
talk to it. Outside a run, :func:`progress` and :func:`emit` do nothing and
:func:`is_cancelled` is False, so components stay plain, unit-testable functions.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from datetime import datetime
from typing import Any, Protocol

from .errors import FlowkitError
from .numbers import LAST_TIME, is_number, is_time
from .schemas import SchemaLike, check_input_name


class RunningStep(Protocol):
    """What the engine's step context offers the definitions layer."""

    def progress(self, message: str, fraction: float | None, eta: float | None) -> str: ...

    def emit(self, chunk: Any) -> str: ...

    def is_cancelled(self) -> bool: ...

    def call(self, component: Any, args: tuple, kwargs: dict) -> Any:
        """A component called inside this step: a checkpointed sub-step."""
        ...

    def call_async(self, component: Any, args: tuple, kwargs: dict) -> Any:
        """An async component called inside this step: a coroutine, the same sub-step."""
        ...

    def wait_for_input(self, name: str, schema: SchemaLike, prompt: str | None,
                       timeout: float | None) -> Any: ...

    def wait_for_event(self, key: str, timeout: float | None, lookback: float | None) -> Any: ...

    def sleep_until(self, deadline: float) -> None: ...


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
    """Report progress of the current step: ``fraction`` is held to 0..1 (arithmetic may
    land a little past either end); ``eta`` in seconds, estimated when absent."""
    if not isinstance(message, str):  # progress(0.5) meant progress("...", 0.5)
        raise TypeError(f"progress(message, fraction=None, eta=None): the message is text, "
                        f"not {message!r}.")
    if fraction is not None and not is_number(fraction):
        raise ValueError(f"progress(fraction=...) is a finite number (held to 0..1) or None, "
                         f"not {fraction!r}.")
    if eta is not None and not (is_number(eta) and eta >= 0):
        raise ValueError(f"progress(eta=...) is a finite number >= 0 or None, not {eta!r}.")
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


# -- waits: the step pauses, the worker is free, the run waits --------------------------


def wait_for_input(
    name: str, schema: SchemaLike = None, prompt: str | None = None,
    timeout: float | None = None,
) -> Any:
    """Pause the step until input ``name`` is sent to the run (``flowkit.send_input``,
    ``POST /runs/<id>/input/<name>``, ``flowkit input``); return it, validated by
    ``schema`` (marshmallow fields, Schema, or a dict of fields).

    The run is ``waiting`` meanwhile: no Celery task and no worker slot is held. The step
    runs again from its start once the input is there: the code before the wait replays
    (components called inside it return their checkpoints), and this call returns the
    input, checkpointed (a later restart replays it, never asks again). Past ``timeout``
    seconds it raises :class:`flowkit.InputTimeout`. Outside a run it raises.
    """
    timeout = _limit(timeout, "wait_for_input(timeout=...)")  # checked outside a run too
    check_input_name(name)
    return _step("wait_for_input").wait_for_input(name, schema, prompt, timeout)


def wait_for_event(key: str, timeout: float | None = None, lookback: float | None = None) -> Any:
    """Pause the step until an event is sent under ``key`` (``flowkit.send_event``,
    ``POST /events/<key>``); return its data. Every run waiting on ``key`` wakes. An event
    sent before the wait began counts when it is at most ``lookback`` seconds old (None:
    it does not; events are kept FLOWKIT_EVENT_LOOKBACK_SECONDS at most). Past ``timeout``
    seconds it raises :class:`flowkit.EventTimeout`."""
    timeout = _limit(timeout, "wait_for_event(timeout=...)")  # checked outside a run too
    lookback = _limit(lookback, "wait_for_event(lookback=...)")
    return _step("wait_for_event").wait_for_event(key, timeout, lookback)


def sleep(seconds: float) -> None:
    """Pause the step for ``seconds`` without holding a worker (outside a run: time.sleep).
    A restart while it sleeps keeps the original deadline. 0 or less does not pause."""
    if not is_number(seconds):
        raise ValueError(f"flowkit.sleep() takes a number of seconds, not {seconds!r}.")
    if not is_time(time.time() + max(seconds, 0)):
        raise ValueError(f"flowkit.sleep({seconds!r}) would end after the year 9999: sleep for "
                         "less (a run that waits that long waits for something else: "
                         "wait_for_event or wait_for_input with no timeout).")
    sleep_until(time.time() + seconds)


def sleep_until(when: datetime | float) -> None:
    """Pause the step until ``when`` (a timezone-aware datetime or a Unix time)."""
    if isinstance(when, datetime):
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(f"flowkit.sleep_until() needs a timezone-aware datetime (a naive "
                             f"one means another moment on a worker in another zone), not "
                             f"{when!r}: e.g. datetime.now(timezone.utc) + timedelta(hours=1).")
        deadline = when.timestamp()
    elif not is_number(when):
        raise ValueError(f"flowkit.sleep_until() takes a timezone-aware datetime or a Unix "
                         f"time, not {when!r}.")
    elif when > LAST_TIME:
        raise ValueError(f"flowkit.sleep_until({when!r}) is after the year 9999: pass a Unix "
                         "time in seconds (not milliseconds), or a datetime.")
    else:
        deadline = float(when)
    ctx = _current.get()
    if ctx is None:
        time.sleep(max(0.0, deadline - time.time()))
        return
    ctx.sleep_until(deadline)


def _limit(seconds: float | None, what: str) -> float | None:
    """A wait's timeout or look-back: None (none), or a finite number of seconds >= 0."""
    if seconds is None:
        return None
    if not (is_number(seconds) and seconds >= 0):
        raise ValueError(f"{what} is a number of seconds >= 0, or None for no limit; not "
                         f"{seconds!r}.")
    if not is_time(time.time() + seconds):
        raise ValueError(f"{what} would end after the year 9999: pass None for no limit, "
                         f"not {seconds!r}.")
    return float(seconds)


def _step(what: str) -> RunningStep:
    ctx = _current.get()
    if ctx is None:
        raise FlowkitError(f"flowkit.{what}() pauses a step of a run; outside a run nothing "
                           "can answer it (in a unit test, give the component its input).")
    return ctx
