"""Exporting flowkit's spans to OpenTelemetry (needs the ``otel`` extra).

With an exporter added, every finished span is exported as it is recorded;
:func:`flowkit.engine.trace.export_run` exports a stored trace after the fact. The
trace id is derived from the run id, so a run's spans group into one trace.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any

from ...serialization import dumps

log = logging.getLogger(__name__)

_processors: list[Any] = []
_lock = threading.Lock()


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


def export(run_id: str, span: dict[str, Any]) -> None:
    """Hand a finished span to every processor added (a no-op without any)."""
    if not _processors:
        return
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
