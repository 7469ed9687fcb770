"""Exporting flowkit's spans to OpenTelemetry (needs the ``otel`` extra).

With an exporter added, every finished span is exported as it is recorded, and a run's
workflow span (the root every step span points at) once the run ends;
:func:`flowkit.engine.trace.export_run` exports a stored trace after the fact. The
trace id is derived from the run id, so a run's spans group into one trace.

LLM calls follow OpenTelemetry's GenAI semantic conventions, so any GenAI-aware backend
reads them: named ``chat <model>``, with ``gen_ai.operation.name``,
``gen_ai.provider.name``, ``gen_ai.request.model`` and the request's parameters,
``gen_ai.response.model``, ``gen_ai.response.finish_reasons`` and ``gen_ai.usage.*``.
Message contents go out only when opted in, as the conventions ask
(``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``), and so do the input and
output of every other span (a step's, a run's), which hold prompts and answers as well. What the conventions do
not cover stays ``flowkit.*`` (cost, retries, failovers, rate-limit wait, time to first
token). The resource's ``service.name`` is ``OTEL_SERVICE_NAME`` (``flowkit`` without it).
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from ...locks import ForkSafeLock
from ...serialization import dumps

log = logging.getLogger(__name__)

_processors: list[Any] = []
_lock = ForkSafeLock()


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


def exporting() -> bool:
    """Whether this process exports spans live (an exporter was added)."""
    return bool(_processors)


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
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    trace_id = _id(run_id, 128)
    flags = TraceFlags(TraceFlags.SAMPLED)

    def ctx(span_id: str) -> SpanContext:
        return SpanContext(trace_id, _id(f"{run_id}/{span_id}", 64), is_remote=False, trace_flags=flags)

    llm = span.get("kind") == "llm"
    attributes: dict[str, Any] = {"flowkit.run_id": run_id}
    if llm:
        attributes.update(genai_attributes(span))
    # a step's or a run's input and output hold prompts and answers as much as an LLM
    # call's messages (a step returns the model's text): they follow the same opt-in
    private = () if _capture_content() else _CONTENT_FIELDS
    for k, v in span.items():
        if k in ("id", "parent", "start", "end") or v is None or (llm and k in _GENAI_FIELDS):
            continue
        if k in private:
            continue
        attributes[f"flowkit.{k}"] = _value(v)
    status = Status(StatusCode.UNSET)
    if span.get("status") == "ok":
        status = Status(StatusCode.OK)
    elif span.get("status") == "error":
        status = Status(StatusCode.ERROR, _said(span.get("error"))[:200])
    if llm:
        label = f"{attributes['gen_ai.operation.name']} {attributes['gen_ai.request.model']}"
    else:
        name = {"workflow": "workflow {name}", "step": "step {step}"}
        label = name.get(span.get("kind", ""), "{id}").format_map(_Missing(span))
    return ReadableSpan(
        name=label,
        context=ctx(span["id"]),
        parent=ctx(span["parent"]) if span.get("parent") else None,
        resource=_resource(),
        attributes=attributes,
        kind=SpanKind.CLIENT if llm else SpanKind.INTERNAL,
        status=status,
        start_time=int(float(span["start"]) * 1e9),
        end_time=int(float(span["end"]) * 1e9),
    )


def _said(error: Any) -> str:
    """A span's error as its status says it: a step's is text already; a workflow span's is
    the run's error object, said as ``Type: message`` (its repr, cut at 200 characters, was
    the status backends showed)."""
    if isinstance(error, dict):
        return f"{error.get('type') or 'Error'}: {error.get('message', '')}"
    return "" if error is None else str(error)


# -- GenAI semantic conventions -------------------------------------------------------------

#: flowkit's operation names (flowkit.llm) as the conventions' gen_ai.operation.name
#: flowkit's LLM operations (the SDK's resource paths) as the conventions name them: the
#: Responses API and structured outputs are chat turns too
_OPERATIONS = {"chat.completions": "chat", "chat.completions.parse": "chat",
               "responses": "chat", "responses.parse": "chat", "embeddings": "embeddings"}
#: request parameters the conventions name, as gen_ai.request.<name>
_REQUEST = {
    "max_tokens": "max_tokens", "max_completion_tokens": "max_tokens",
    "max_output_tokens": "max_tokens",
    "temperature": "temperature", "top_p": "top_p", "seed": "seed",
    "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
    "stop": "stop_sequences", "n": "choice.count",
}
#: fields of an llm span exported as gen_ai.* (or, for contents, only when opted in)
_GENAI_FIELDS = frozenset({
    "operation", "system", "model", "response_model", "response_id",
    "prompt_tokens", "completion_tokens", "finish_reason", "server_address", "server_port",
    "messages", "input", "output",
})
CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
#: fields of every other span (step, sub-step, workflow) exported only when opted in
_CONTENT_FIELDS = ("input", "output")


def genai_attributes(span: dict[str, Any]) -> dict[str, Any]:
    """The GenAI semantic conventions' attributes of a flowkit ``llm`` span."""
    operation = span.get("operation") or ""
    found: dict[str, Any] = {
        "gen_ai.operation.name": _OPERATIONS.get(operation, operation),
        "gen_ai.provider.name": span.get("system") or "openai",
        # as sent to this provider (a failover may map it: flowkit.requested_model says
        # what the caller asked for)
        "gen_ai.request.model": span.get("model") or span.get("requested_model") or "?",
        "gen_ai.response.model": span.get("response_model") or span.get("model"),
        "gen_ai.response.id": span.get("response_id"),
        "gen_ai.usage.input_tokens": span.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": span.get("completion_tokens"),
        "server.address": span.get("server_address"),
        "server.port": span.get("server_port"),
    }
    if span.get("finish_reason"):
        found["gen_ai.response.finish_reasons"] = [str(span["finish_reason"])]
    request = span.get("request") if isinstance(span.get("request"), dict) else {}
    for param, name in _REQUEST.items():
        value = request.get(param)
        if value is not None:
            found[f"gen_ai.request.{name}"] = (
                [value] if name == "stop_sequences" and isinstance(value, str) else value)
    if span.get("status") == "error" and span.get("error"):
        found["error.type"] = str(span["error"]).partition(":")[0] or "error"
    if _capture_content():
        found.update(_contents(span, found["gen_ai.operation.name"]))
    return {k: _value(v) for k, v in found.items() if v is not None}


def _capture_content() -> bool:
    return os.environ.get(CAPTURE_CONTENT, "").strip().lower() in ("1", "true", "yes")


def _contents(span: dict[str, Any], operation: str) -> dict[str, Any]:
    """The messages in and out, in the conventions' shape (role and parts), as recorded:
    redacted and bounded like the rest of the trace."""
    if operation != "chat":
        return {}
    found: dict[str, Any] = {}
    messages = span.get("messages")
    if messages is None:  # the Responses API's input: text, or a list of messages
        given = span.get("input")
        messages = [{"role": "user", "content": given}] if isinstance(given, str) else given
    if isinstance(messages, list):
        found["gen_ai.input.messages"] = dumps([_message(m) for m in messages])
    if span.get("output") is not None:
        out = _message({"role": "assistant", "content": span["output"]})
        if span.get("finish_reason"):
            out["finish_reason"] = span["finish_reason"]
        found["gen_ai.output.messages"] = dumps([out])
    return found


def _message(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        parts = [{"type": "text", "content": content}]
    elif isinstance(content, dict) and "tool_calls" in content:
        parts = [{"type": "tool_call", "name": c.get("name"), "arguments": c.get("arguments")}
                 for c in content["tool_calls"]]
    else:
        parts = [{"type": "text", "content": dumps(content)}] if content is not None else []
    return {"role": message.get("role"), "parts": parts}


def _value(v: Any) -> Any:
    """An attribute value: OpenTelemetry takes scalars and lists of one scalar type."""
    if isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v):
        return list(v)
    return dumps(v)


_resources: dict[tuple[str, str], Any] = {}


def _resource():
    """This process's resource: what OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES say,
    with ``service.name`` ``flowkit`` when neither names the service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    key = (os.environ.get("OTEL_SERVICE_NAME", ""), os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    resource = _resources.get(key)
    if resource is None:
        resource = Resource.create()
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "flowkit"}))
        _resources[key] = resource
    return resource


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "?"
