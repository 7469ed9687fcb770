"""How a worker reports flowkit's tasks to monitors (Flower, ``celery events``).

Monitors know a task only from the events its worker sends (``-E``): received, started,
then succeeded, failed or retried. A flowkit task often ends by raising Celery's
``Ignore``: a fan-out or an agent loop's step replaced by what runs next, a step whose run
waits, was cancelled or restarted, or failed after its retries (the run's record and
events hold the outcome). Celery sends no event at all for an ignored task, so a monitor
showed it started forever and counted it processed but never succeeded. This request
class (every flowkit task's ``Request``) sends ``task-succeeded`` for it, with what
happened as its result: the task did its job, and what became of the run is the run's.
"""

from __future__ import annotations

import time
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from celery.exceptions import Ignore
from celery.worker.request import Request


class FlowkitRequest(Request):
    """A task request that reports an ignored task as succeeded (see the module)."""

    # Celery hands an ignored task's outcome to on_failure (its per-task subclass of this
    # class overrides on_success, not on_failure)
    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> Any:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):  # as a prefork child hands it back
            exc = exc.exc
        handled = super().on_failure(exc_info, send_failed_event, return_ok)
        if isinstance(exc, Ignore):
            runtime = time.time() - self.time_start if self.time_start else None
            self.send_event("task-succeeded", result=_outcome(exc), runtime=runtime)
        return handled


def _outcome(exc: Ignore) -> str:
    reason = str(exc)
    if reason == "Replaced by new task":  # Task.replace's own words
        return "replaced by the tasks that follow it"
    return reason or "handled by flowkit: the run's events say what became of it"
