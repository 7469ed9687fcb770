"""The event stream contract: one Redis Stream per run, JSON documents.

Every event is ``{"type", "ts", "run", ...}`` plus ``step`` and ``attempt`` where it
concerns a step. The Redis stream id is the event id and the resume cursor.
Chunks (``step.output``) of an attempt later reported by ``step.retrying`` or
listed in ``run.restarted``'s ``superseded`` belong to an abandoned attempt: a
client drops them (:func:`superseded_attempts` does the bookkeeping), as it drops those
whose ``sub_steps`` names a sub-step attempt a ``sub_step.retrying`` reported
(:func:`superseded_sub_steps`).

This module is the contract alone; reading a run's stream is ``flowkit.history`` and
``flowkit.follow`` (:mod:`flowkit.engine.control`), or the API's relay.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from .serialization import loads

RUN_SCHEDULED = "run.scheduled"
RUN_QUEUED = "run.queued"
RUN_HELD = "run.held"
RUN_ADMITTED = "run.admitted"
RUN_STARTED = "run.started"
STEP_STARTED = "step.started"
STEP_PROGRESS = "step.progress"
STEP_OUTPUT = "step.output"
STEP_RETRYING = "step.retrying"
#: A sub-step's attempt failed and runs again in place, inside its step's attempt.
SUB_STEP_RETRYING = "sub_step.retrying"
STEP_COMPLETED = "step.completed"
STEP_FAILED = "step.failed"
RUN_RESTARTED = "run.restarted"
RUN_WAITING = "run.waiting"
RUN_RESUMED = "run.resumed"
RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"

TYPES = (
    RUN_SCHEDULED, RUN_QUEUED, RUN_HELD, RUN_ADMITTED, RUN_STARTED, STEP_STARTED,
    STEP_PROGRESS, STEP_OUTPUT, STEP_RETRYING, SUB_STEP_RETRYING, STEP_COMPLETED, STEP_FAILED, RUN_RESTARTED, RUN_WAITING, RUN_RESUMED,
    RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED,
)
TERMINAL = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED})

#: The cursor before a stream's first event.
START = "0-0"
#: A stream id as clients send it: ``<ms>-<seq>`` (or ``0``, the start), ASCII digits.
CURSOR_PATTERN = r"^(0|[0-9]{1,20}-[0-9]{1,20})$"
_CURSOR = re.compile(CURSOR_PATTERN)
#: Redis stream ids are two unsigned 64-bit numbers.
_MAX_PART = 2**64 - 1


def parse_cursor(value: str | None) -> str | None:
    """A client's resume cursor normalised (``0`` and "" are the start); None if it is not
    a stream id Redis accepts."""
    if value is None:
        return None
    value = value.strip()
    if value in ("0", ""):
        return START
    if not _CURSOR.fullmatch(value):
        return None
    ms, seq = (int(part) for part in value.split("-"))
    valid = ms <= _MAX_PART and seq <= _MAX_PART and (ms, seq) != (_MAX_PART, _MAX_PART)
    return value if valid else None  # nothing follows the largest id: Redis refuses a range


def cursor_order(event_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair: ids compare by (milliseconds, sequence)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


#: How far a cursor may lie ahead of this process's clock and still be one a stream gave:
#: stream ids are the Redis primary's milliseconds, and clocks differ.
CLOCK_SKEW_SECONDS = 60.0


def past_the_end(cursor: str, last_id: str | None, live: bool = False,
                 now: float | None = None) -> str | None:
    """Why ``cursor`` is past a stream whose last id is ``last_id`` (None: empty), said for
    people; None when it is not. A stream resumed there would wait for ever for ids that
    far on: no stream gave such a cursor (a typo, another run's id).

    Unless the run is ``live`` and the cursor is not ahead of the clock: a Redis failover
    loses the tail of a stream (replication is asynchronous), so a client resumes past the
    new end; the run's events to come take later ids from the clock and reach it, and
    nothing it did not see is skipped (no event lies between the end and its cursor)."""
    if cursor == START:
        return None
    if live and cursor_order(cursor)[0] <= ((now or time.time()) + CLOCK_SKEW_SECONDS) * 1000:
        return None
    if last_id is None:
        return "it has no event yet"
    if cursor_order(cursor) > cursor_order(last_id):
        return f"its last event is {last_id}"
    return None


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


def parse(entries: list[tuple[str, str]]) -> list[Event]:
    """Stream entries (id, JSON) as events."""
    return [Event(entry_id, loads(raw)) for entry_id, raw in entries]


def stream_ends(last_delivered_terminal: bool, more_may_follow: bool) -> bool:
    """Whether a reader that just delivered ``event`` has reached the end of the stream.

    The rule for every reader (the relay's WebSocket, SSE and NDJSON streams, ``follow``):
    a stream ends at the run's *latest* terminal event only. A run that was retried holds
    ``run.failed``, then ``run.restarted`` ... ``run.succeeded``: an earlier terminal event
    is followed by more events, and the reader goes on. A reader ends when the last event
    it delivered is terminal and the read that returned it reached the stream's end
    (``more_may_follow`` is False: it did not stop at its count). A reader live when a run
    fails therefore ends there; resuming later with its last id gets what came after (a
    retry), or ends at once when nothing did.
    """
    return last_delivered_terminal and not more_may_follow


def superseded_attempts(events: list[Event] | list[dict[str, Any]]) -> set[tuple[str, int]]:
    """(step, attempt) pairs whose ``step.output`` chunks a client should discard; the
    events as :class:`Event` s or as the JSON the SSE and WebSocket streams send (dicts).

    An attempt is superseded when ``step.retrying`` reports it, when ``run.restarted``
    lists it, and when a later attempt of its step starts, unless it paused (its
    ``run.waiting`` names it): a resumed attempt runs the step again from its start but
    does not send its text up to the wait again, so the paused attempt's text stays the
    step's. The browser client's fold (clients/js) keeps the same rule."""
    dropped: set[tuple[str, int]] = set()
    paused: set[tuple[str, int]] = set()
    for event in events:
        kind, data = (event.type, event.data) if isinstance(event, Event) else (
            event.get("type"), event)
        if kind == STEP_RETRYING:
            dropped.add((data["step"], data["attempt"]))
        elif kind == RUN_RESTARTED:
            for entry in data.get("superseded", []):
                dropped.add((entry["step"], entry["attempt"]))
        elif kind == RUN_WAITING and data.get("step") and data.get("attempt"):
            paused.add((data["step"], data["attempt"]))
        elif kind == STEP_STARTED:
            step = data["step"]
            dropped.update((step, earlier) for earlier in range(1, data.get("attempt") or 1)
                           if (step, earlier) not in paused)
    return dropped


def superseded_sub_steps(events: list[Event] | list[dict[str, Any]]) -> set[str]:
    """The sub-step attempts (``<key>@<number>``) that failed and ran again in place,
    named by ``sub_step.retrying``: a ``step.output`` chunk whose ``sub_steps`` holds one
    of them is a failed attempt's text, to discard as :func:`superseded_attempts`'s are.
    A sub-step (a component called inside a step) retries inside its step's attempt, so
    its chunks would otherwise stand (a reader showed the half answer, then the whole)."""
    failed: set[str] = set()
    for event in events:
        kind, data = (event.type, event.data) if isinstance(event, Event) else (
            event.get("type"), event)
        if kind == SUB_STEP_RETRYING and data.get("sub_step"):
            failed.add(data["sub_step"])
    return failed


def make(type_: str, run_id: str, **fields: Any) -> dict[str, Any]:
    """An event document; ``None`` fields are left out."""
    doc = {"type": type_, "ts": time.time(), "run": run_id}
    doc.update({k: v for k, v in fields.items() if v is not None})
    return doc
