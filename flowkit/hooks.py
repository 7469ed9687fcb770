"""Hook lists flowkit calls during a step's life; append callables to extend it.

Each list documents its call signature. A hook that raises is logged and skipped:
observability must never fail a step.

- ``attempt_started(ctx, value)``: an attempt of a step begins (``ctx`` is the
  :class:`~flowkit.context.StepContext`, ``value`` the step's input).
- ``attempt_finished(ctx, value, output, error, duration)``: it ended with
  ``output`` or with ``error`` (an exception), after ``duration`` seconds.
- ``run_failed(run)``: a run failed (a step gave up, or the reaper gave up), once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

attempt_started: list[Callable[..., None]] = []
attempt_finished: list[Callable[..., None]] = []
run_failed: list[Callable[..., None]] = []


def call(hooks: list[Callable[..., None]], *args: Any) -> None:
    for hook in list(hooks):
        try:
            hook(*args)
        except Exception:
            log.exception("flowkit hook %r raised; ignored", hook)
