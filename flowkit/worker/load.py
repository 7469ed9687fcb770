"""What a worker node says of its load with each heartbeat, for the reaper to find a
consumer that takes nothing (:mod:`flowkit.engine.consumers`).

``held``: the messages it holds, running or reserved for a slot (Celery's own count, kept
by the consumer in the node's main process); ``received_at``: when its consumer last
received a message from the queues it serves (beat's housekeeping, every few seconds on
a queue of its own, does not count); ``saturated_at``: when a heartbeat last found no slot free (a worker
that was full had no reason to take more); ``draining``: it stopped consuming on purpose;
``queues``: those it consumes now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery.worker import state as worker_state

from ..engine import drain


class NodeLoad:
    def __init__(self) -> None:
        self.concurrency: int | None = None
        self.housekeeping = ""
        self.queues: Callable[[], list[str]] | None = None
        self.received_at = self.saturated_at = time.time()

    def ready(self, concurrency: int | None, housekeeping: str,
              queues: Callable[[], list[str]] | None = None) -> None:
        """The node is ready: nothing taken yet, and nothing missed either.
        ``housekeeping``: beat's queue (flowkit.engine.broker.reaper_queue); ``queues``:
        the queues it consumes now (announced once, they stayed listed after
        ``flowkit drain`` cancelled them)."""
        self.concurrency, self.housekeeping, self.queues = concurrency, housekeeping, queues
        self.received_at = self.saturated_at = time.time()

    def received(self, request: Any = None, **_: Any) -> None:
        """Celery's task_received: the consumer took a message."""
        delivery = getattr(request, "delivery_info", None) or {}
        if delivery.get("routing_key") != self.housekeeping:
            self.received_at = time.time()

    def __call__(self) -> dict[str, Any]:
        held = len(worker_state.reserved_requests)
        if self.concurrency and held >= self.concurrency:
            self.saturated_at = time.time()
        load = {"held": held, "received_at": self.received_at,
                "saturated_at": self.saturated_at, "draining": drain.draining()}
        if self.queues is not None:
            load["queues"] = self.queues()
        return load


#: This process's node (its main process is the consumer's).
node_load = NodeLoad()
