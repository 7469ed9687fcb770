"""The OpenAPI 3 document of the API, built by apispec from marshmallow schemas.

Each served workflow gets its own ``POST /workflows/<name>/runs`` whose request body
is that workflow's input schema, so generated clients and fuzzers know its fields.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import marshmallow
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from ..events import CURSOR_PATTERN
from ..states import RunState
from ..version import __version__
from . import schemas
from .state import ApiState

_JSON = "application/json"
_BEARER = [{"bearer": []}]
_ERRORS = {
    400: "Invalid input: `error.fields` holds marshmallow's messages per field.",
    401: "No valid credentials.",
    403: "The credentials do not cover this resource (e.g. a run token of another run).",
    404: "Unknown workflow or run (or the run expired).",
    409: "The run is not in a state that allows this.",
    413: "Request body over the configured limit.",
}
_CURSOR = {"type": "string", "pattern": CURSOR_PATTERN, "example": "1700000000000-0"}


def _plugin() -> tuple[APISpec, MarshmallowPlugin]:
    # Nested schemas are inlined (no name), so a workflow's JSON Schema stands alone.
    plugin = MarshmallowPlugin(schema_name_resolver=lambda schema: None)
    spec = APISpec(
        title="flowkit", version=__version__, openapi_version="3.0.3", plugins=[plugin],
        info={"description": "Run flowkit workflows and follow their runs live. "
              "WebSocket: GET /runs/{run_id}/stream upgrades to a socket that sends each "
              "event as JSON; the client may send {\"resume\": \"<event id>\"}."},
    )
    return spec, plugin


@lru_cache(maxsize=256)
def _json_schema_of(schema: marshmallow.Schema) -> dict[str, Any]:
    _, plugin = _plugin()
    return plugin.converter.schema2jsonschema(schema)


def json_schema(schema: marshmallow.Schema | None) -> dict[str, Any] | None:
    """JSON Schema of a workflow's marshmallow schema (None when it has none)."""
    return None if schema is None else _json_schema_of(schema)


def _component_name(workflow: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", workflow) + "Input"


def _responses(ok: dict[int, Any], errors: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status, body in ok.items():
        if isinstance(body, tuple):
            description, content = body
        else:
            description, content = "OK", {_JSON: {"schema": body}}
        out[str(status)] = {"description": description, "content": content}
    for status in errors:
        out[str(status)] = {"description": _ERRORS[status], "content": {_JSON: {"schema": "Error"}}}
    return out


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"in": "query", "name": name, "required": False, "schema": schema,
            "description": description}


def _header(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"in": "header", "name": name, "required": False, "schema": schema,
            "description": description}


_RUN_ID = {"in": "path", "name": "run_id", "required": True, "schema": {"type": "string"}}
_TOKEN = _query("token", {"type": "string"}, "A run token, for clients that cannot send headers.")


def build_spec(api: ApiState) -> dict[str, Any]:
    spec, _ = _plugin()
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "An API key or a run token."})
    for name in ("Error", "Run", "StartedRun", "RunPage", "EventPage", "Output", "WorkflowInfo",
                 "WorkflowList", "Trace", "Health"):
        spec.components.schema(name, schema=getattr(schemas, name))
    p = api.url_prefix
    opts = api.options
    run_errors = (401, 403, 404)

    spec.path(f"{p}/workflows", operations={"get": {
        "summary": "The served workflows and their input schemas (JSON Schema).",
        "responses": _responses({200: "WorkflowList"}, (401, 403))}})
    spec.path(f"{p}/workflows/{{name}}", operations={"get": {
        "summary": "One workflow.",
        "parameters": [{"in": "path", "name": "name", "required": True,
                        "schema": {"type": "string"}}],
        "responses": _responses({200: "WorkflowInfo"}, (401, 403, 404))}})

    started = {_JSON: {"schema": "StartedRun"}}
    streamed = {"text/event-stream": {"schema": {"type": "string"}},
                "application/x-ndjson": {"schema": {"type": "string"}}}
    for wf in api.workflows():
        if wf.input_schema is not None:
            spec.components.schema(_component_name(wf.name), schema=wf.input_schema)
            body_schema: Any = _component_name(wf.name)
        else:
            body_schema = {}
        spec.path(f"{p}/workflows/{wf.name}/runs", operations={"post": {
            "summary": f"Start a run of {wf.name}.",
            "description": wf.description or "Answers 202 at once; with ?wait= (or Prefer: "
            "wait=) holds until the run ends; with Accept: text/event-stream or "
            "application/x-ndjson streams its events.",
            "parameters": [
                _query("wait", {"type": "number", "minimum": 0, "maximum": opts.max_wait},
                       "Hold the request up to this many seconds for the run to end."),
                _header("Idempotency-Key", {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
                        "Same key, same run: a replay answers 200 with the first run."),
                _header("Prefer", {"type": "string"}, "wait=<seconds>, like ?wait=."),
            ],
            "requestBody": {"required": False, "content": {_JSON: {"schema": body_schema}}},
            "responses": _responses({
                200: ("The run ended within the wait, or an idempotent replay.", started),
                202: ("Started (still running).", {**started, **streamed}),
            }, (400, 401, 403, 404, 409, 413)),
        }})

    spec.path(f"{p}/runs", operations={"get": {
        "summary": "Runs, newest first.",
        "parameters": [
            _query("workflow", {"type": "string", "minLength": 1, "maxLength": 200}),
            _query("state", {"type": "string", "enum": [s.value for s in RunState]}),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": opts.max_page_size}),
            _query("before", {"type": "string", "minLength": 1, "maxLength": 64},
                   "The `next` of the previous page."),
        ],
        "responses": _responses({200: "RunPage"}, (400, 401, 403))}})
    spec.path(f"{p}/runs/{{run_id}}", operations={"get": {
        "summary": "A run's record.", "parameters": [_RUN_ID, _TOKEN],
        "responses": _responses({200: "Run"}, run_errors)}})
    spec.path(f"{p}/runs/{{run_id}}/output", operations={"get": {
        "summary": "A succeeded run's output.", "parameters": [_RUN_ID, _TOKEN],
        "responses": _responses({200: "Output"}, (*run_errors, 409))}})
    spec.path(f"{p}/runs/{{run_id}}/events", operations={"get": {
        "summary": "The run's events: a JSON page, or with Accept: text/event-stream an SSE "
                   "stream (history, then the live tail, closing after the terminal event).",
        "parameters": [
            _RUN_ID, _TOKEN,
            _query("after", _CURSOR, "Only events after this event id."),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": opts.events_page}),
            _header("Last-Event-ID", {"type": "string"}, "SSE resume cursor."),
        ],
        "responses": _responses({200: ("Events.", {
            _JSON: {"schema": "EventPage"}, "text/event-stream": {"schema": {"type": "string"}}})},
            (400, *run_errors))}})
    spec.path(f"{p}/runs/{{run_id}}/stream", operations={"get": {
        "summary": "WebSocket: the run's events as JSON messages, resumable with ?after=.",
        "parameters": [_RUN_ID, _TOKEN, _query("after", _CURSOR)],
        "responses": {
            "101": {"description": "Switching to the WebSocket protocol."},
            **_responses({}, (400, *run_errors)),
        }}})
    for action, summary in (("cancel", "Cancel a queued or running run."),
                            ("retry", "Resume a failed run from its failed step.")):
        spec.path(f"{p}/runs/{{run_id}}/{action}", operations={"post": {
            "summary": summary, "parameters": [_RUN_ID],
            "responses": _responses({200 if action == "cancel" else 202: "Run"},
                                    (*run_errors, 409))}})
    spec.path(f"{p}/runs/{{run_id}}/trace", operations={"get": {
        "summary": "The run's trace spans.", "parameters": [_RUN_ID],
        "responses": _responses({200: "Trace"}, run_errors)}})
    spec.path(f"{p}/healthz", operations={"get": {
        "summary": "Redis reachable, and workers that beat recently.", "security": [],
        "responses": _responses({200: "Health"}, ()) | {"503": {
            "description": "Redis does not answer.", "content": {_JSON: {"schema": "Error"}}}}}})
    doc = spec.to_dict()
    doc["security"] = _BEARER
    return doc
