"""Run traces: spans of the workflow, of each step attempt and of each LLM call.

``spans`` records and reads them, ``writer`` batches their writes, ``redaction`` keeps
secrets out, ``otel`` exports them to OpenTelemetry. What callers use:

    flowkit.engine.trace.read(run_id)                 # the spans, workflow span first
    flowkit.engine.trace.add_exporter(exporter)       # export finished spans live
    flowkit.engine.trace.export_run(run_id, exporter) # export a stored trace
"""

from __future__ import annotations

from typing import Any

from ...store import Store, get_store
from . import spans
from .otel import add_exporter, remove_exporters, to_otel
from .redaction import REDACTED, bounded, redact, remember_secret, secret_values
from .spans import WORKFLOW_SPAN, new_span_id, record_call, run_ended
from .writer import writer

__all__ = [
    "REDACTED", "WORKFLOW_SPAN", "add_exporter", "bounded", "export_run", "flush",
    "new_span_id", "read", "record_call", "redact", "remember_secret", "remove_exporters",
    "run_ended",
    "secret_values", "to_otel",
]


def read(run_id: str, store: Store | None = None) -> list[dict[str, Any]]:
    """Every span of the run, oldest first; the workflow span leads."""
    store = store or get_store()
    return spans.read(run_id, store, store.get_run(run_id))


def flush() -> None:
    """Write every trace record this process still holds."""
    writer.flush()


def export_run(run_id: str, exporter: Any) -> int:
    """Export the finished spans of a stored trace to ``exporter``; returns how many."""
    finished = [s for s in read(run_id) if s.get("end") is not None]
    exporter.export([to_otel(run_id, s) for s in finished])
    return len(finished)
