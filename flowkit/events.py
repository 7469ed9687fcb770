"""The event stream contract: one Redis Stream per run, JSON documents.

Every event is ``{"type", "ts", "run", ...}`` plus ``step`` and ``attempt`` where it
concerns a step. The Redis stream id is the event id and the resume cursor.
Chunks (``step.output``) of an attempt later reported by ``step.retrying`` or
listed in ``run.restarted``'s ``superseded`` belong to an abandoned attempt: a
client drops them (:func:`superseded_attempts` does the bookkeeping).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .serialization import loads
from .store import Store, get_store

RUN_QUEUED = "run.queued"
RUN_STARTED = "run.started"
STEP_STARTED = "step.started"
STEP_PROGRESS = "step.progress"
STEP_OUTPUT = "step.output"
STEP_RETRYING = "step.retrying"
STEP_COMPLETED = "step.completed"
STEP_FAILED = "step.failed"
RUN_RESTARTED = "run.restarted"
RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"

TYPES = (
    RUN_QUEUED, RUN_STARTED, STEP_STARTED, STEP_PROGRESS, STEP_OUTPUT, STEP_RETRYING,
    STEP_COMPLETED, STEP_FAILED, RUN_RESTARTED, RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED,
)
TERMINAL = (RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED)
START = "0-0"


@dataclass(frozen=True)
class Event:
    id: str
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return self.data["type"]

    @property
    def terminal(self) -> bool:
        return self.data["type"] in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.data}


def _parse(entries: list) -> list[Event]:
    return [Event(entry_id, loads(fields["e"])) for entry_id, fields in entries]


def history(
    run_id: str, after: str = START, limit: int | None = None, store: Store | None = None
) -> list[Event]:
    """Events after ``after`` (exclusive), oldest first."""
    store = store or get_store()
    entries = store.redis.xrange(store.keys.events(run_id), min=f"({after}", count=limit)
    return _parse(entries)


def read_new(
    run_id: str, after: str, block_ms: int, store: Store | None = None, count: int = 500
) -> list[Event]:
    """Events after ``after``, waiting up to ``block_ms`` for the first one."""
    store = store or get_store()
    result = store.redis.xread({store.keys.events(run_id): after}, count=count, block=block_ms)
    return _parse(result[0][1]) if result else []


def follow(
    run_id: str, after: str = START, block_ms: int = 1000, store: Store | None = None
) -> Iterator[Event]:
    """Every event after ``after``: history first, then the live tail; ends after a terminal event."""
    cursor = after
    while True:
        batch = read_new(run_id, cursor, block_ms, store)
        for event in batch:
            yield event
            cursor = event.id
            if event.terminal:
                return


def superseded_attempts(events: list[Event]) -> set[tuple[str, int]]:
    """(step, attempt) pairs whose ``step.output`` chunks a client should discard."""
    dropped: set[tuple[str, int]] = set()
    for event in events:
        if event.type == STEP_RETRYING:
            dropped.add((event.data["step"], event.data["attempt"]))
        elif event.type == RUN_RESTARTED:
            for entry in event.data.get("superseded", []):
                dropped.add((entry["step"], entry["attempt"]))
    return dropped


def make(type_: str, run_id: str, **fields: Any) -> dict[str, Any]:
    """An event document; ``None`` fields are left out."""
    import time

    doc = {"type": type_, "ts": time.time(), "run": run_id}
    doc.update({k: v for k, v in fields.items() if v is not None})
    return doc
