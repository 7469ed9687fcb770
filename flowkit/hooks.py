"""Hook lists flowkit calls during a step's life; append callables to extend it.

Each list documents its call signature. A hook that raises is logged and skipped:
observability must never fail a step.

- ``attempt_started(ctx, value)``: an attempt of a step begins (``ctx`` is the
  :class:`~flowkit.context.StepContext`, ``value`` the step's input).
- ``attempt_finished(ctx, value, output, error, duration)``: it ended with
  ``output`` or with ``error`` (an exception), after ``duration`` seconds.
- ``run_failed(run)``: a run failed (a step gave up, or the reaper gave up), once.
- ``step_retrying(run_id, step, component, attempt, error, delay)``: attempt ``attempt``
  of a step failed with ``error`` and is retried after ``delay`` seconds (its policy).
- ``llm_call(span)``: a call of :mod:`flowkit.llm` ended, inside a run or not; ``span`` is
  its trace record (``provider``, ``model``, ``operation``, ``status``, ``duration``,
  ``retries``, ``cached``, ``prompt_tokens``, ``completion_tokens``, ``cost``, ...), not
  redacted: a hook must not keep its content.
- ``stream_subscribers(delta)``: a stream subscriber (WebSocket, SSE, synchronous
  invocation) joined (+1) or left (-1) this process's relay.

:mod:`flowkit.metrics` is built on these lists (``flowkit.metrics.install()``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

attempt_started: list[Callable[..., None]] = []
attempt_finished: list[Callable[..., None]] = []
run_failed: list[Callable[..., None]] = []
step_retrying: list[Callable[..., None]] = []
llm_call: list[Callable[..., None]] = []
stream_subscribers: list[Callable[..., None]] = []


def call(hooks: list[Callable[..., None]], *args: Any) -> None:
    for hook in list(hooks):
        try:
            hook(*args)
        except Exception:
            log.exception("flowkit hook %r raised; ignored", hook)
