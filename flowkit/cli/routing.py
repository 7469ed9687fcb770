"""Which Celery queues the registered workflows route to: what a worker must consume.

A worker started on the default queue alone leaves every step routed elsewhere
(``.queue("llm")``) queued for ever. ``flowkit dev`` prints these queues and its worker
consumes them all (:mod:`.devworker`).
"""

from __future__ import annotations

from ..engine import control
from ..workflow import workflows


def routed_queues() -> list[str]:
    """Every queue a registered workflow routes to, and the default queue (flowkit's own
    tasks, the reaper's sweep and resumes, go there), sorted."""
    default = control.default_queue()
    found = {default}
    for wf in workflows().values():
        found |= wf.queues(default)
    return sorted(found)
