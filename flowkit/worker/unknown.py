"""A step this worker's code does not define: during a rolling deploy, a worker of the old
release takes a step of a workflow the new release added, from the queue both consume.

Celery drops such a message ("Received unregistered task"), and its run waited for the
reaper, whose resume could meet an old worker again. Here the message goes back to its
queue when a live worker of that queue announces the run's workflow (the new release's),
as it came (same task id, body and headers, one more ``flowkit_handed_back``). It goes
back after :data:`~flowkit.defaults.HAND_BACK_SECONDS`, sent from this worker's consumer,
which takes no message meanwhile: an idle new worker, waiting on the queue, is then the
one that gets it (handed back from a timer, the old worker's own wait on the queue, begun
as the timer started, was the oldest, and Redis gave it the message again and again). A
busy one gets it at a later round. With no such worker it is dropped as before, saying so: the reaper
sends the run again, and a worker that has no workflow of its name fails it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..component import TASK_PREFIX
from ..defaults import HAND_BACK_SECONDS
from ..engine.control import serving
from ..engine.heartbeat import this_node
from ..states import RunState
from ..store import get_store

log = logging.getLogger("flowkit.worker")

#: The header counting how many times old workers handed the message back.
HANDED_BACK = "flowkit_handed_back"
#: The most hand-backs of one message (about ten minutes of them): a step that the workers
#: announcing its workflow do not define either (a release that renamed it) goes round.
MOST_HAND_BACKS = 600


def hand_back(sender: Any = None, message: Any = None, name: str | None = None,
              **_: Any) -> None:
    """Celery's ``task_unknown`` (its consumer rejected the message already)."""
    if sender is None or message is None or not (name or "").startswith(TASK_PREFIX):
        return
    try:
        _, kwargs, _ = message.decode()
        run_id = kwargs["run_id"]
        queue = message.delivery_info.get("routing_key") or ""
        workflow, state, gen = get_store().run_fields(run_id, "workflow", "state", "gen")
        others = serving(workflow or "", queue, but=this_node())
    except Exception as exc:  # not a step message flowkit sent, Redis away: Celery's drop
        log.warning("flowkit: a step this worker does not define (%s) was dropped: %s",
                    name, exc)
        return
    if state is None or RunState(state).terminal or str(gen) != str(kwargs.get("gen")):
        # the run moved on (its resume found its steps changed and failed it, a restart):
        # no worker would run this message, and new workers, announcing the workflow but
        # not this step, handed it to one another once a second for good
        log.info("flowkit: step %s of run %s is not defined on this worker, and its run "
                 "has moved on: dropped", name, run_id)
        return
    rounds = int(message.headers.get(HANDED_BACK) or 0)
    if rounds >= MOST_HAND_BACKS:
        log.warning("flowkit: step %s of run %s was handed back %d times and no worker took "
                    "it: dropped; the reaper sends the run again", name, run_id,
                    MOST_HAND_BACKS)
        return
    if not others:
        log.warning("flowkit: step %s of run %s is not defined on this worker, nor does a "
                    "live worker of queue %s serve workflow %r: dropped; the reaper sends "
                    "the run again", name, run_id, queue, workflow)
        return
    log.warning("flowkit: step %s of run %s (workflow %r) is not defined on this worker "
                "(an older release?); handed back to queue %s, which %s serve",
                name, run_id, workflow, queue, ", ".join(others))
    time.sleep(HAND_BACK_SECONDS)
    _publish(sender.app, message, rounds + 1)


class UnknownStep(logging.Filter):
    """Celery logs an unknown task as an ERROR of 30 lines (the message's body and headers,
    a KeyError's traceback) that says it was discarded: for a flowkit step,
    :func:`hand_back`'s one WARNING line says what became of it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and isinstance(record.msg, str) and (
                record.msg.startswith("Received unregistered task")):
            args = record.args if isinstance(record.args, tuple) else ()
            missing = args[0].args[0] if args and isinstance(args[0], KeyError) else ""
            return not str(missing).startswith(TASK_PREFIX)
        return True


def _publish(app: Any, message: Any, rounds: int) -> None:
    info = message.delivery_info
    headers = {**message.headers, HANDED_BACK: rounds}
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                message.body, exchange=info.get("exchange") or "",
                routing_key=info.get("routing_key"), headers=headers,
                content_type=message.content_type, content_encoding=message.content_encoding,
                priority=message.properties.get("priority"),
                correlation_id=message.properties.get("correlation_id"),
                reply_to=message.properties.get("reply_to"), retry=True)
    except Exception as exc:  # the broker away: the reaper sends the run again
        log.warning("flowkit: could not hand back step %s (%s); the reaper sends its run "
                    "again", message.headers.get("task"), exc)
