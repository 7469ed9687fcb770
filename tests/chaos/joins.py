"""A join whose branch's worker died before the join counted the branch: a workflow whose
first branch runs on a queue of its own (which only the test's worker ``a`` consumes), and
the hook that kills that worker. A module apart from tests.chaos.workflows: a web process
serving those (FLOWKIT_WORKFLOW_MODULES) would report that queue as one no worker
consumes."""

from __future__ import annotations

import os
import signal

from celery.backends.redis import RedisBackend

import flowkit
from flowkit import parallel
from flowkit.store import get_store
from tests.chaos.workflows import gathered, hold, work

#: Queue of ``joined``'s first branch, which a worker of its own takes.
BRANCH_QUEUE = "chaos-branch"
joined = flowkit.Workflow("chaos.joined", [parallel(work.queue(BRANCH_QUEUE), hold), gathered])

_count_part = RedisBackend.on_chord_part_return
#: Armed by the test before its run starts: the first branch ends ~10 ms after the start,
#: and a flag set afterwards came too late under load (the worker was never killed).
DIE_BEFORE_COUNTING = "chaos:die-before-counting"


def _die_before_counting(self, request, state, result, **kwargs):
    """SIGKILL this worker once a branch of a run has checkpointed, before the result
    backend counts its part of the join, when the test asks."""
    run_id = (request.kwargs or {}).get("run_id") if request is not None else None
    if run_id and get_store().redis.delete(DIE_BEFORE_COUNTING):
        os.kill(os.getpid(), signal.SIGKILL)
    return _count_part(self, request, state, result, **kwargs)


RedisBackend.on_chord_part_return = _die_before_counting
