"""Run traces: a span for the workflow, for every step attempt and for every LLM call.

Spans are JSON documents appended to a Redis stream beside the run
(``Keys.trace``), never rewritten: an attempt appends an opening record when it
starts and a closing one when it ends, and :func:`read` merges the records of
each span id. The workflow span is read from the run record itself. The trace
expires with the run's retention.

Records are written in batches (group commit, one pipeline per batch and
process): a running attempt's records (its opening record, its calls) wait at
most ``TRACE_FLUSH_SECONDS``, and an attempt's closing record is written, with
everything waiting, before the hook returns, so a finished step's trace is
complete before its checkpoint is. A thousand concurrent LLM steps in one worker
then cost a few trace writes a second, not three round trips each. A process
that dies loses at most its last ``TRACE_FLUSH_SECONDS`` of records.

Secrets never reach a trace: values under secret keys (``api_key``,
``authorization``, ... and the fields a component marks with ``.secret(...)``)
are replaced, and so is every occurrence of a provider API key or of a secret
input value anywhere else in a span (an echo in the output, an error message).

With an OpenTelemetry exporter configured (``add_exporter``, needs the
``otel`` extra), every finished span is also exported; ``export_run`` exports a
stored trace after the fact.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from . import hooks
from .config import get_settings
from .context import StepContext, current
from .serialization import dumps, loads
from .store import Store, get_store

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
#: Keys whose values are secret wherever they appear (compared case-insensitively).
SECRET_KEYS = frozenset({
    "api_key", "apikey", "api-key", "x-api-key", "authorization", "password", "secret",
    "client_secret", "access_token", "refresh_token", "openai_api_key",
})
#: Shorter strings are never scrubbed as secret values: that would mangle ordinary text.
MIN_SECRET_LENGTH = 8
WORKFLOW_SPAN = "run"

_known_secrets: set[str] = set()
_attempts: dict[tuple[str, str, int], _Attempt] = {}
_secret_fields: dict[str, frozenset[str]] = {}
_processors: list[Any] = []
_lock = threading.Lock()


# -- secrets ------------------------------------------------------------------------------


def remember_secret(value: str | None) -> None:
    """Scrub ``value`` from every span this process records (provider API keys)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _known_secrets.add(value)


def redact(value: Any, fields: frozenset[str] = frozenset(), values: frozenset[str] = frozenset()) -> Any:
    """``value`` with secret keys' values and known secret strings replaced by ``[redacted]``."""
    scrub = sorted(values | _known_secrets, key=len, reverse=True)

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: REDACTED if _is_secret_key(k, fields) else walk(item) for k, item in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(item) for item in v]
        if isinstance(v, str):
            for secret in scrub:
                if secret in v:
                    v = v.replace(secret, REDACTED)
            return v
        return v

    return walk(value)


def _is_secret_key(key: Any, fields: frozenset[str]) -> bool:
    return isinstance(key, str) and (key in fields or key.lower() in SECRET_KEYS)


def secret_values(value: Any, fields: frozenset[str]) -> frozenset[str]:
    """The strings stored under secret keys in ``value`` (so their echoes can be scrubbed)."""
    found: set[str] = set()

    def walk(v: Any, secret: bool) -> None:
        if isinstance(v, dict):
            for k, item in v.items():
                walk(item, secret or _is_secret_key(k, fields))
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item, secret)
        elif secret and isinstance(v, (str, int)) and len(str(v)) >= MIN_SECRET_LENGTH:
            found.add(str(v))

    walk(value, False)
    return frozenset(found)


def secret_fields_of(component: str) -> frozenset[str]:
    """Fields marked secret on any configuration of ``component`` (registered or in a workflow)."""
    cached = _secret_fields.get(component)
    if cached is None:
        from .component import registered
        from .workflow import workflows

        names: set[str] = set()
        candidates = [c for c in registered().values() if c.name == component]
        for wf in workflows().values():
            candidates.extend(c for c in wf.components() if c.name == component)
        for comp in candidates:
            names.update(comp.policy.secret_fields)
        cached = _secret_fields[component] = frozenset(names)
    return cached


def bounded(value: Any) -> Any:
    """``value`` itself, or a truncated preview when its JSON exceeds TRACE_MAX_FIELD_CHARS."""
    limit = get_settings().trace_max_field_chars
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"... [{len(value)} chars]"
    try:
        text = dumps(value)
    except (TypeError, ValueError):
        return repr(value)[:limit]
    if len(text) <= limit:
        return value
    return {"truncated": True, "chars": len(text), "preview": text[:limit]}


# -- storage ------------------------------------------------------------------------------


class _Writer:
    """Trace records of this process waiting to be written, flushed in order in batches.

    Each record gets a sequence number; ``flush(upto)`` returns once every record up
    to it is written. One batch is in flight at a time (so records reach each run's
    stream in the order they were made), and whoever flushes takes everything waiting:
    concurrent closing records share one round trip.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards pending and seq
        self.flushing = threading.Lock()  # one batch in flight
        self.pending: list[tuple[Store, str, str]] = []
        self.seq = 0
        self.written = 0
        self.wake = threading.Event()
        self.pid = 0

    def add(self, store: Store, run_id: str, doc: str) -> int:
        with self.lock:
            self.pending.append((store, run_id, doc))
            self.seq += 1
            seq = self.seq
            start = self.pid != os.getpid()  # first record in this process (or after a fork)
            self.pid = os.getpid()
        if start:
            threading.Thread(target=self._background, name="flowkit-trace", daemon=True).start()
        self.wake.set()
        return seq

    def flush(self, upto: int | None = None, extra: _Extra | None = None) -> list[Any]:
        """Write what waits (in order); with ``extra``, its commands share the round trip
        (after the records) and their results are returned."""
        with self.flushing:
            with self.lock:
                if extra is None and upto is not None and self.written >= upto:
                    return []  # another flush wrote it while we waited
                batch, self.pending = self.pending, []
                last = self.seq
            try:
                return _write(batch, extra)
            finally:
                self.written = last

    def _background(self) -> None:
        pid = os.getpid()
        while self.pid == pid:
            self.wake.wait()
            self.wake.clear()
            time.sleep(get_settings().trace_flush_seconds)
            try:
                self.flush()
            except Exception:  # observability must never take the worker down
                log.exception("flowkit: could not write trace records")


#: (store, fn): ``fn(pipeline)`` queues more commands on that store's pipeline.
_Extra = tuple[Store, Callable[[Any], None]]


def _write(batch: list[tuple[Store, str, str]], extra: _Extra | None = None) -> list[Any]:
    by_store: dict[int, list[tuple[Store, str, str]]] = {}
    stores: dict[int, Store] = {}
    for item in batch:
        by_store.setdefault(id(item[0]), []).append(item)
        stores[id(item[0])] = item[0]
    if extra is not None:
        by_store.setdefault(id(extra[0]), [])
        stores[id(extra[0])] = extra[0]
    extra_results: list[Any] = []
    for sid, items in by_store.items():
        store = stores[sid]
        pipe = store.redis.pipeline(transaction=False)
        keys = {}
        for _, run_id, doc in items:
            key = keys.setdefault(run_id, store.keys.trace(run_id))
            pipe.xadd(key, {"s": doc})
        for key in keys.values():
            pipe.expire(key, store.settings.retention_seconds)
        queued = len(pipe.command_stack)
        if extra is not None and extra[0] is store:
            extra[1](pipe)
        extra_results = pipe.execute()[queued:] or extra_results
    return extra_results


_writer = _Writer()


def record(run_id: str, span: dict[str, Any], store: Store | None = None, wait: bool = True) -> None:
    """Append one span record to the run's trace (and export it when it is finished).

    ``wait=False`` leaves it to the next batch (at most TRACE_FLUSH_SECONDS away).
    """
    seq = _writer.add(store or get_store(), run_id, dumps(span))
    if wait:
        _writer.flush(seq)
    if _processors and span.get("end") is not None and "start" in span:
        _export(run_id, span)


def flush() -> None:
    """Write every trace record this process still holds."""
    _writer.flush()


def flush_with(store: Store, commands: Callable[[Any], None]) -> list[Any]:
    """Write every waiting record, then ``commands(pipeline)``, in one round trip; returns
    the results of ``commands``. A step's checkpoint goes this way, so its trace is
    complete before its checkpoint, at no extra round trip."""
    return _writer.flush(extra=(store, commands))


def read(run_id: str, store: Store | None = None) -> list[dict[str, Any]]:
    """Every span recorded for ``run_id``, oldest first; the workflow span leads."""
    store = store or get_store()
    spans: dict[str, dict[str, Any]] = {}
    for _, fields in store.redis.xrange(store.keys.trace(run_id)):
        doc = loads(fields["s"])
        spans.setdefault(doc["id"], {}).update(doc)
    record_ = store.get_run(run_id)
    head = [_workflow_span(run_id, record_)] if record_ else []
    return head + list(spans.values())


def _workflow_span(run_id: str, h: dict[str, str]) -> dict[str, Any]:
    start = float(h.get("started_at") or h.get("created_at") or 0)
    end = float(h["finished_at"]) if h.get("finished_at") else None
    state = h.get("state", "")
    span = {
        "id": WORKFLOW_SPAN, "parent": None, "kind": "workflow", "name": h.get("workflow"),
        "run": run_id, "version": h.get("version"), "state": state,
        "status": {"succeeded": "ok", "failed": "error", "cancelled": "cancelled"}.get(state, "running"),
        "start": start, "end": end, "duration": round(end - start, 6) if end else None,
        "restarts": int(h.get("restarts", 0)),
    }
    if h.get("error"):
        span["error"] = redact(loads(h["error"]))
    return span


# -- step attempts (hooks) -------------------------------------------------------------------


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


def _on_attempt_started(ctx: StepContext, value: Any) -> None:
    from .heartbeat import worker_id

    fields = secret_fields_of(ctx.component)
    values = secret_values(value, fields)
    span = {
        "id": attempt_span_id(ctx), "parent": WORKFLOW_SPAN, "kind": "step", "name": ctx.component,
        "step": ctx.step, "attempt": ctx.attempt, "worker": worker_id(), "start": time.time(),
        "status": "running", "input": bounded(redact(value, fields, values)),
    }
    with _lock:
        _attempts[_attempt_key(ctx)] = _Attempt(values, span)
    record(ctx.run_id, span, ctx.store, wait=False)


def _on_attempt_finished(
    ctx: StepContext, value: Any, output: Any, error: BaseException | None, duration: float
) -> None:
    from .errors import RunCancelled

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
        span["status"] = "cancelled" if isinstance(error, RunCancelled) else "error"
        span["error"] = redact(f"{type(error).__name__}: {error}", fields, values)
    # written with the step's checkpoint (or its failure) by the executor, in one round trip
    record(ctx.run_id, span, ctx.store, wait=False)


hooks.attempt_started.append(_on_attempt_started)
hooks.attempt_finished.append(_on_attempt_finished)


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


# -- OpenTelemetry ------------------------------------------------------------------------------


def add_exporter(exporter: Any, batch: bool = True) -> None:
    """Export every finished span of this process to an OpenTelemetry ``SpanExporter``.

    Pass an exporter (wrapped in a batch processor, or a simple one with
    ``batch=False``) or a ``SpanProcessor``. Needs ``pip install flowkit[otel]``.
    """
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if isinstance(exporter, SpanProcessor):
        processor = exporter
    else:
        processor = (BatchSpanProcessor if batch else SimpleSpanProcessor)(exporter)
    with _lock:
        _processors.append(processor)


def remove_exporters() -> None:
    with _lock:
        processors = list(_processors)
        _processors.clear()
    for processor in processors:
        processor.shutdown()


def export_run(run_id: str, exporter: Any) -> int:
    """Export the finished spans of a stored trace to ``exporter``; returns how many."""
    spans = [s for s in read(run_id) if s.get("end") is not None]
    exporter.export([to_otel(run_id, s) for s in spans])
    return len(spans)


def _export(run_id: str, span: dict[str, Any]) -> None:
    try:
        otel_span = to_otel(run_id, span)
        for processor in list(_processors):
            processor.on_end(otel_span)
    except Exception:
        log.exception("flowkit: OpenTelemetry export failed")


def _id(text: str, bits: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[: bits // 4], 16) or 1


def to_otel(run_id: str, span: dict[str, Any]):
    """A flowkit span as an OpenTelemetry ``ReadableSpan`` (trace id derived from the run id)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    trace_id = _id(run_id, 128)
    flags = TraceFlags(TraceFlags.SAMPLED)

    def ctx(span_id: str) -> SpanContext:
        return SpanContext(trace_id, _id(f"{run_id}/{span_id}", 64), is_remote=False, trace_flags=flags)

    attributes: dict[str, Any] = {"flowkit.run_id": run_id}
    for k, v in span.items():
        if k in ("id", "parent", "start", "end") or v is None:
            continue
        attributes[f"flowkit.{k}"] = v if isinstance(v, (str, bool, int, float)) else dumps(v)
    status = Status(StatusCode.UNSET)
    if span.get("status") == "ok":
        status = Status(StatusCode.OK)
    elif span.get("status") == "error":
        status = Status(StatusCode.ERROR, str(span.get("error", ""))[:200])
    name = {"workflow": "workflow {name}", "step": "step {step}", "llm": "llm {operation} {model}"}
    label = name.get(span.get("kind", ""), "{id}").format_map(_Missing(span))
    return ReadableSpan(
        name=label,
        context=ctx(span["id"]),
        parent=ctx(span["parent"]) if span.get("parent") else None,
        resource=Resource.create({"service.name": "flowkit"}),
        attributes=attributes,
        kind=SpanKind.CLIENT if span.get("kind") == "llm" else SpanKind.INTERNAL,
        status=status,
        start_time=int(float(span["start"]) * 1e9),
        end_time=int(float(span["end"]) * 1e9),
    )


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"
