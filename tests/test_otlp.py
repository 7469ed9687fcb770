"""The README's OpenTelemetry instruction, as written: ``pip install flowkit[otel]`` gives the
OTLP exporter it imports (it gave only the SDK: ``import opentelemetry.exporter.otlp``
failed), and a run's trace reaches a real OTLP/HTTP receiver through it."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import flowkit
from flowkit.engine import trace
from tests import workflows as wf
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace endpoint: decodes each POST to /v1/traces, keeps its span names."""

    received: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.received.extend(span.name for span in scope.spans)
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_run_s_trace_reaches_an_otlp_http_receiver_through_the_readme_s_exporter(
        store, worker):
    run = wf.simple.start({"n": 1})
    run.result(20)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.server_port}/v1/traces")
        assert trace.export_run(run.id, exporter) >= 3
        exporter.shutdown()
    finally:
        server.shutdown()
    assert "workflow simple" in Receiver.received
    assert {"step 0:t.add_one", "step 1:t.double"} <= set(Receiver.received)


def test_a_failed_workflow_span_s_status_says_the_error_as_type_and_message():
    """It said the run's error object's repr, cut at 200 characters."""
    from flowkit.engine.trace.otel import to_otel  # noqa: PLC0415

    error = {"type": "KeyError", "message": "'n'", "step": "2:t.b", "where": "flows.py:3",
             "attempts": [{"attempt": 1, "error": "KeyError: 'n'", "at": 1.5}]}
    span = to_otel("01M95MV5XK63RY93YGFZ3HVZ8S", {
        "id": "run", "parent": None, "kind": "workflow", "name": "w", "status": "error",
        "error": error, "start": 1.0, "end": 2.0})
    assert span.status.description == "KeyError: 'n'"
    step = to_otel("01M95MV5XK63RY93YGFZ3HVZ8S", {
        "id": "step:2:t.b@1", "parent": "run", "kind": "step", "step": "2:t.b",
        "status": "error", "error": "KeyError: 'n'", "start": 1.0, "end": 2.0})
    assert step.status.description == "KeyError: 'n'"


def test_a_retried_run_that_ends_again_exports_a_span_of_its_own_under_its_root(store, worker):
    """Its root was exported again, under the same span id: backends held two spans of one
    id, the failed one and the retried run's, and counted its error twice."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    trace.add_exporter(exporter, batch=False)
    try:
        run = wf.exhausted.start({"n": 1})  # both attempts fail; a third call succeeds
        assert run.wait(20).state == "failed"

        def workflow_spans() -> list:
            return [s for s in exporter.get_finished_spans()
                    if s.attributes.get("flowkit.run_id") == run.id
                    and s.name == "workflow exhausted"]

        wait_until(lambda: len(workflow_spans()) == 1, 20, "the failed run's root")
        run.retry()
        assert flowkit.get_run(run.id).wait(20).state == "succeeded"
        wait_until(lambda: len(workflow_spans()) == 2, 20, "the retried run's end")
    finally:
        trace.remove_exporters()
    root, again = workflow_spans()
    mine = [s for s in exporter.get_finished_spans() if s.attributes.get("flowkit.run_id") == run.id]
    assert len({s.context.span_id for s in mine}) == len(mine), "two spans share an id"
    assert root.parent is None and root.status.status_code.name == "ERROR"
    assert again.parent.span_id == root.context.span_id
    assert again.status.status_code.name == "OK" and again.attributes["flowkit.ends"] == 2
    steps = [s for s in mine if s.name.startswith("step ")]
    assert steps and all(s.parent.span_id == root.context.span_id for s in steps)
