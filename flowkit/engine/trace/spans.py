"""Run traces: a span for the workflow, for every step attempt and for every LLM call.

Spans are JSON documents appended to a Redis stream beside the run, never rewritten:
an attempt appends an opening record when it starts and a closing one when it ends,
and :func:`read` merges the records of each span id. The workflow span is made from
the run record itself. The trace expires with the run's retention. Records are
written in batches (:mod:`.writer`) and redacted (:mod:`.redaction`).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from ... import events
from ...context import current
from ...errors import RunCancelled, StepSuspended, describe_error
from ...locks import ForkSafeLock
from ...serialization import dumps, loads, utf8_json
from ...states import RunState
from ...store import Store
from ..step import StepContext
from . import otel
from .redaction import bounded, redact, secret_fields_of, secret_values
from .writer import writer

log = logging.getLogger(__name__)

WORKFLOW_SPAN = "run"
#: The workflow span's status for each ended run state (else "running").
_STATUS = {RunState.SUCCEEDED: "ok", RunState.FAILED: "error", RunState.CANCELLED: "cancelled"}

_attempts: dict[tuple[str, str, int], _Attempt] = {}
_lock = ForkSafeLock()


def record(run_id: str, span: dict[str, Any], store: Store, wait: bool = True) -> None:
    """Append one span record to the run's trace (and export it when it is finished).

    ``wait=False`` leaves it to the next batch (at most TRACE_FLUSH_SECONDS away).
    """
    seq = writer.add(store, run_id, utf8_json(dumps(span)))
    if wait:
        writer.flush(seq)
    if span.get("end") is not None and "start" in span:
        otel.export(run_id, span)


def read(run_id: str, store: Store, record_: dict[str, str]) -> list[dict[str, Any]]:
    """Every span recorded for ``run_id``, oldest first; the workflow span (made from the
    run's record, ``record_``) leads. An attempt whose worker never closed its span (it
    died, or the run moved on) is shown ended, with why (:func:`_close_dead_attempts`)."""
    spans: dict[str, dict[str, Any]] = {}
    for raw in store.read_trace(run_id):
        doc = loads(raw)
        spans.setdefault(doc["id"], {}).update(doc)
    if not record_:
        return list(spans.values())
    _close_dead_attempts(run_id, store, record_, spans)
    return [workflow_span(run_id, record_), *spans.values()]


def _close_dead_attempts(
    run_id: str, store: Store, record_: dict[str, str], spans: dict[str, dict[str, Any]]
) -> None:
    """End the step spans still "running" that no attempt will close: those superseded by
    a restart (``superseded``, with the restart's reason and time) and, once the run has
    ended, any other (``abandoned``, at the run's end). A trace of a finished run then
    has no running span."""
    open_spans = {(s["step"], s["attempt"]): s for s in spans.values()
                  if s.get("kind") == "step" and s.get("status") == "running"}
    if not open_spans:
        return
    if int(record_.get("restarts", 0) or 0) or int(record_.get("gen", 0) or 0):
        for event in events.parse(store.history(run_id, events.START)):
            if event.type != events.RUN_RESTARTED:
                continue
            for gone in event.data.get("superseded", ()):
                span = open_spans.pop((gone["step"], gone["attempt"]), None)
                if span is not None:
                    span.update(status="superseded", end=max(event.data["ts"], span["start"]),
                                reason=f"superseded by a restart: {event.data.get('reason')}")
    if record_.get("finished_at"):
        ended = float(record_["finished_at"])
        for span in open_spans.values():
            span.update(status="abandoned", end=max(ended, span["start"]),
                        reason=f"the run ended ({record_.get('state')}) while it ran")
    for span in spans.values():
        if span.get("end") is not None and span.get("duration") is None:
            span["duration"] = round(span["end"] - span["start"], 6)


def workflow_span(run_id: str, h: dict[str, str]) -> dict[str, Any]:
    start = float(h.get("started_at") or h.get("created_at") or 0)
    end = float(h["finished_at"]) if h.get("finished_at") else None
    state = h.get("state", "")
    span = {
        "id": WORKFLOW_SPAN, "parent": None, "kind": "workflow", "name": h.get("workflow"),
        "run": run_id, "version": h.get("version"), "state": state,
        "status": _STATUS.get(state, "running"),
        "start": start, "end": end, "duration": round(end - start, 6) if end else None,
        "restarts": int(h.get("restarts", 0)),
    }
    if h.get("error"):
        span["error"] = redact(loads(h["error"]))
    return span


def run_ended(run_id: str, store: Store) -> None:
    """The run ended in this process: its workflow span, the root every other span of the
    run points at, goes to the live exporters (it is made from the run's record, never
    recorded, so nothing else would export it)."""
    if not otel.exporting():
        return
    try:
        record_ = store.get_run(run_id)
        if record_ and record_.get("finished_at"):
            otel.export(run_id, _ended_again(run_id, store, workflow_span(run_id, record_)))
    except Exception:  # observability must never fail the run's end
        log.exception("flowkit: could not export the workflow span of run %s", run_id)


def _ended_again(run_id: str, store: Store, span: dict[str, Any]) -> dict[str, Any]:
    """The workflow span as this end exports it. Its first end exports the root; a retried
    run that ends again exports a span of its own under the root (``ends`` counts them), as the
    root went out already: exported again under the root's id, backends held two spans of one
    id (the failed one and the retried run's), and counted the run's error twice."""
    ends = store.count_exported_end(run_id)
    if ends <= 1:
        return span
    return {**span, "id": f"{WORKFLOW_SPAN}/end{ends}", "parent": WORKFLOW_SPAN, "ends": ends}


# -- step attempts ---------------------------------------------------------------------------


def attempt_span_id(ctx: StepContext) -> str:
    return f"step:{ctx.step}@{ctx.attempt}"


def _attempt_key(ctx: StepContext) -> tuple[str, str, int]:
    return (ctx.run_id, ctx.step, ctx.attempt)


class _Attempt:
    """A running attempt: its secrets, its opening record, and the latest end of its calls."""

    __slots__ = ("values", "span", "last_end")

    def __init__(self, values: frozenset[str], span: dict[str, Any]) -> None:
        self.values = values
        self.span = span
        self.last_end = span["start"]


def attempt_started(ctx: StepContext, value: Any) -> None:
    """An attempt of a step begins: its opening record (written with the next batch)."""
    fields = secret_fields_of(ctx.component)
    values = secret_values(value, fields)
    span = {
        "id": attempt_span_id(ctx), "parent": WORKFLOW_SPAN, "kind": "step", "name": ctx.component,
        "step": ctx.step, "attempt": ctx.attempt, "worker": ctx.worker, "start": time.time(),
        "status": "running", "input": bounded(redact(value, fields, values)),
    }
    with _lock:
        _attempts[_attempt_key(ctx)] = _Attempt(values, span)
    record(ctx.run_id, span, ctx.store, wait=False)


def attempt_finished(
    ctx: StepContext, value: Any, output: Any, error: BaseException | None, duration: float
) -> None:
    """An attempt ended with ``output`` or ``error``: its closing record, which the executor
    writes with the step's checkpoint (or its failure) in one round trip."""
    with _lock:
        state = _attempts.pop(_attempt_key(ctx), None)
    fields = secret_fields_of(ctx.component)
    end = time.time()
    values, opened = (state.values, state.span) if state else (frozenset(), {})
    # the opening record's start, and an end after every call's: the step span encloses
    # its calls by construction, whatever the clock did meanwhile
    start = opened.get("start", end - duration)
    if state is not None:
        end = max(end, state.last_end)
    span: dict[str, Any] = {
        **opened, "id": attempt_span_id(ctx), "start": start, "end": end,
        "duration": round(duration, 6),
    }
    if error is None:
        span.update(status="ok", output=bounded(redact(output, fields, values)))
    else:
        span["status"] = ("paused" if isinstance(error, StepSuspended) else
                          "superseded" if getattr(ctx, "stopped", None) == "superseded" else
                          "cancelled" if isinstance(error, RunCancelled) else "error")
        span["error"] = redact(describe_error(error), fields, values)
    record(ctx.run_id, span, ctx.store, wait=False)


# -- calls inside a step (the LLM client) ------------------------------------------------------


def new_span_id(kind: str) -> str:
    return f"{kind}:{uuid.uuid4().hex[:16]}"


def record_call(span: dict[str, Any]) -> bool:
    """Record a finished call made by the running step (redacted); False outside a run."""
    ctx = current()
    if ctx is None:
        return False
    with _lock:
        state = _attempts.get(_attempt_key(ctx))
        if state is not None:
            # a call starts after its step and ends before it (time.time() may step back)
            opened = state.span["start"]
            if "start" in span and span["start"] < opened:
                span = {**span, "start": opened}
            if span.get("end") is not None:
                state.last_end = max(state.last_end, span["end"], span.get("start", 0))
        _count_tokens(ctx.tokens, span)
    values = state.values if state is not None else frozenset()
    doc = redact(span, secret_fields_of(ctx.component), values)
    doc.update(parent=attempt_span_id(ctx), step=ctx.step, attempt=ctx.attempt)
    try:
        # written with the step's closing record at the latest; a call of a step
        # abandoned by its timeout (no attempt open any more) is written at once
        record(ctx.run_id, doc, ctx.store, wait=state is None)
    except Exception:  # observability must never fail the call it observes
        log.exception("flowkit: could not record a trace span")
    return True


def _count_tokens(tokens: dict[str, int], span: dict[str, Any]) -> None:
    if span.get("cached"):  # answered from the cache: no tokens spent
        return
    for kind in ("prompt", "completion"):
        used = span.get(f"{kind}_tokens") or 0
        if used:
            tokens[kind] = tokens.get(kind, 0) + used
            tokens["total"] = tokens.get("total", 0) + used
