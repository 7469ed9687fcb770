"""The Celery app of the crash tests' own workers: queue ``chaos`` (FLOWKIT_DEFAULT_QUEUE)."""

from celery.worker.control import control_command

import flowkit

app = flowkit.create_celery_app("flowkit-chaos",
                                imports=["tests.chaos.workflows", "tests.chaos.joins"])


@control_command(args=[("queue", str)], signature="<queue>")
def chaos_stall_consumer(state, queue: str) -> dict:
    """The worker's consumer stops taking messages from ``queue`` while the worker still
    lists the queue as consumed, as a hung broker channel leaves it (Celery's
    cancel_consumer takes the queue off the list too: a drain, not a fault)."""
    state.consumer.task_consumer.cancel_by_queue(queue)
    return {"ok": f"stalled {queue}"}
