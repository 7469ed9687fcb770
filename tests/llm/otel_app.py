"""A worker that exports its spans live to the OpenTelemetry SDK's InMemorySpanExporter,
as a deployment adds its OTLP exporter, and writes what it holds to
``$OTEL_TEST_SPANS`` (JSON, one object per span) when it shuts down, for the test to read."""

import json
import os

from celery import signals
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import flowkit
from flowkit.engine import trace

app = flowkit.create_celery_app("flowkit-llm-otel", imports=["tests.llm.otel_workflows"])
exporter = InMemorySpanExporter()
trace.add_exporter(exporter, batch=False)


@signals.worker_shutdown.connect
def write_spans(**_) -> None:
    with open(os.environ["OTEL_TEST_SPANS"], "w") as out:
        json.dump([json.loads(s.to_json()) for s in exporter.get_finished_spans()], out)
