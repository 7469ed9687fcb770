"""The OpenAPI 3 document of the API, built by apispec from marshmallow schemas.

Each served workflow gets its own ``POST /workflows/<name>/runs`` whose request body
is that workflow's input schema, so generated clients and fuzzers know its fields.
The document describes what the views do: the query parameters are those of the
marshmallow schemas the views load (:mod:`.schemas`), every status a view or the
blueprint's hooks answer is listed with its JSON error body and headers, and the
streams (SSE, NDJSON, the WebSocket upgrade) are content types and headers of their
operations. ``tests/api/test_openapi.py`` runs schemathesis against it with every check.
"""

from __future__ import annotations

import re
from typing import Any

import marshmallow
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from ..version import __version__
from . import schemas
from .options import ApiOptions
from .state import ApiState

_JSON = "application/json"
_SSE = "text/event-stream"
_NDJSON = "application/x-ndjson"
_TEXT = {"schema": {"type": "string"}}
#: Each Server-Sent Event of a stream (the schema of ``text/event-stream`` content is that of
#: one event, as OpenAPI 3.2's ``itemSchema`` says and schemathesis reads it).
_SSE_EVENT = {
    "type": "object", "required": ["data"],
    "description": "One event of the stream: `id:` the event id (resume from it with "
                   "Last-Event-ID), `data:` the event as JSON (an `Event`). `: ping` comments "
                   "keep an idle stream alive. A stream opened with a run token ends when the "
                   "token expires, after a last message `event: token_expired` without an id "
                   "whose data is the API's `Error`: reconnect with a fresh token.",
    "properties": {
        "id": {"type": "string"},
        "event": {"type": "string", "enum": ["message", "token_expired"]},
        "data": {"type": "string", "description": "An `Event` as JSON."},
    },
}
_STREAMS = {
    _SSE: {"schema": "SseEvent"},
    _NDJSON: {"schema": {"type": "string", "description": "One `Event` as JSON per line; empty "
                                                          "lines keep an idle stream alive."}},
}

#: Security requirements: an API key (or a run token) as a bearer token; the read
#: endpoints of one run also take the run token as ``?token=`` (EventSource, WebSocket).
_KEY = [{"bearer": []}]
_RUN_READ = [{"bearer": []}, {"runToken": []}]
_PUBLIC: list[dict[str, list[str]]] = []

_SECURITY_SCHEMES = {
    "bearer": {
        "type": "http", "scheme": "bearer",
        "description": "An API key of FLOWKIT_API_KEYS (everything), or a run token "
                       "(returned by POST /workflows/{name}/runs: reads that run's record, "
                       "output, events, stream and trace, and nothing else: 403 elsewhere)."},
    "runToken": {
        "type": "apiKey", "in": "query", "name": "token",
        "description": "A run token as ?token=, for clients that cannot send headers "
                       "(browsers' EventSource and WebSocket)."},
}

_HEADERS: dict[str, dict[str, Any]] = {
    "WWW-Authenticate": {"description": "The bearer challenge.", "required": True,
                         "schema": {"type": "string", "example": 'Bearer realm="flowkit"'}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                    "schema": {"type": "integer", "minimum": 0}},
    "Location": {"description": "The run's URL (GET /runs/{run_id}).", "required": True,
                 "schema": {"type": "string"}},
    "X-Flowkit-Run": {"description": "The run's id.", "required": True,
                      "schema": {"type": "string"}},
    "X-Flowkit-Token": {"description": "The run token (as `token` in a JSON body).",
                        "required": True, "schema": {"type": "string"}},
    "Preference-Applied": {"description": "`wait=<seconds>`: how long the request held.",
                           "required": False, "schema": {"type": "string"}},
    "Cache-Control": {"description": "`no-cache` on the streams (SSE, NDJSON).", "required": False,
                      "schema": {"type": "string", "enum": ["no-cache"]}},
    "Upgrade": {"description": "The WebSocket protocol.", "required": True,
                "schema": {"type": "string", "enum": ["websocket"]}},
    "ConnectionUpgrade": {"description": "Upgrade.", "required": True,
                          "schema": {"type": "string", "enum": ["Upgrade"]}},
    "ConnectionClose": {"description": "`close` when the rest of a chunked body too large to "
                                       "drain was left unread.", "required": False,
                        "schema": {"type": "string", "enum": ["close"]}},
    "Sec-WebSocket-Accept": {"description": "RFC 6455's accept hash of Sec-WebSocket-Key.",
                             "required": True, "schema": {"type": "string"}},
}

#: Error responses: ``(description, {header name: header component})``; each body is an
#: ``Error``.
_ERRORS: dict[int, tuple[str, dict[str, str]]] = {
    400: ("Invalid input: `error.fields` holds the messages per field, query parameter or "
          "header; or (`bad_request`, the connection closed) a body that ended before its "
          "Content-Length: nothing was done with it, send it again whole.", {}),
    401: ("No valid credentials (`unauthorized`), or an expired run token (`token_expired`).",
          {"WWW-Authenticate": "WWW-Authenticate"}),
    403: ("The credentials do not cover this resource: a run token anywhere but its own run's "
          "reads, or, for a caller scoped to an owner (the host "
          "app's `authorize`), what reaches across owners: schedules, events, workers, "
          "metrics; or (`cross_site`) a browser page of another site changing something "
          "or opening a WebSocket (FLOWKIT_API_TRUSTED_ORIGINS).", {}),
    404: ("Unknown run (or expired after its retention; to a caller scoped to an owner, "
          "another owner's run too), or unknown workflow.", {}),
    409: ("The run is not in a state that allows this, or an Idempotency-Key already used "
          "with another input.", {}),
    413: ("Request body (FLOWKIT_API_MAX_BODY_BYTES, chunked or not), or the workflow input "
          "(FLOWKIT_MAX_PAYLOAD_BYTES), over its limit.", {"Connection": "ConnectionClose"}),
    415: ("A request body (of an operation that reads one) that is not `Content-Type: "
          "application/json`.", {}),
    429: ("`too_many_streams`: this run's tokens, or this owner-scoped caller, hold "
          "FLOWKIT_API_STREAMS_PER_CALLER streams open on this server already (API keys are "
          "not counted); close one and retry after Retry-After.",
          {"Retry-After": "Retry-After"}),
    503: ("flowkit's Redis (`store_unavailable`) or Celery broker (`broker_unavailable`: its "
          "message names a run it stored, not to be started again) is unavailable; retry "
          "after Retry-After.",
          {"Retry-After": "Retry-After"}),
}

#: The errors of every operation that reads or writes a run (Redis).
_AUTH = (401, 403)
_RUN = (*_AUTH, 404, 503)

#: Upgrade headers of a WebSocket handshake (RFC 6455); without the first two the request
#: is not routed to the socket at all (400, before the credentials are looked at).
_UPGRADE = "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]"
_WEBSOCKET_REQUEST = {
    "Upgrade": ({"type": "string", "pattern": "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"},
                "`websocket` (any case)."),
    "Connection": ({"type": "string", "pattern": rf"^([^,]*,[ \t]*)*{_UPGRADE}[ \t]*(,[^,]*)*$"},
                   "A list of tokens, one of them `Upgrade` (any case)."),
    "Sec-WebSocket-Key": ({"type": "string", "example": "dGhlIHNhbXBsZSBub25jZQ=="},
                          "The client's nonce (base64 of 16 random bytes)."),
    "Sec-WebSocket-Version": ({"type": "string", "enum": ["13"]}, "The protocol version."),
}


def _plugin() -> tuple[APISpec, MarshmallowPlugin]:
    # Nested schemas are inlined (no name), so a workflow's JSON Schema stands alone.
    plugin = MarshmallowPlugin(schema_name_resolver=lambda schema: None)
    spec = APISpec(
        title="flowkit", version=__version__, openapi_version="3.0.3", plugins=[plugin],
        info={"description": "Run flowkit workflows and follow their runs live: as JSON pages, "
              "Server-Sent Events, NDJSON, or a WebSocket (GET /runs/{run_id}/stream upgrades "
              "to a socket that sends each event as a JSON text message; the client may send "
              "{\"resume\": \"<event id>\"} to be served again from there). "
              "Errors are always {\"error\": {\"code\", \"message\", \"fields\"}}."},
    )
    return spec, plugin


def has_required_fields(schema: marshmallow.Schema | None) -> bool:
    """Whether an input schema requires any field (then a start needs a request body)."""
    return schema is not None and any(f.required for f in schema.load_fields.values())


def _component_name(workflow: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", workflow) + "Input"


def _operation_id(prefix: str, workflow: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]+", "_", workflow)


def _responses(ok: dict[int, Any], errors: tuple[int, ...]) -> dict[str, Any]:
    """``ok``: status -> a schema name, or a full response object; ``errors``: statuses."""
    out: dict[str, Any] = {}
    for status, body in ok.items():
        out[str(status)] = body if isinstance(body, dict) else {
            "description": "OK", "content": {_JSON: {"schema": body}}}
    for status in sorted(errors):
        out[str(status)] = f"Error{status}"
    return out


def _error_responses() -> dict[str, dict[str, Any]]:
    return {f"Error{status}": {
        "description": description,
        "content": {_JSON: {"schema": "Error"}},
        **({"headers": headers} if headers else {}),
    } for status, (description, headers) in _ERRORS.items()}


def _args(schema: type[marshmallow.Schema], plugin: MarshmallowPlugin,
          **overrides: dict[str, Any]) -> list[dict[str, Any]]:
    """The query parameters of the marshmallow schema a view loads, constraints included;
    ``overrides`` merge into a parameter's JSON Schema (limits set per app)."""
    params = plugin.converter.schema2parameters(schema(), location="query")
    for param in params:
        param["schema"].update(overrides.get(param["name"], {}))
    return params


def _header(name: str, schema: dict[str, Any], description: str,
            required: bool = False) -> dict[str, Any]:
    return {"in": "header", "name": name, "required": required, "schema": schema,
            "description": description}


_RUN_ID = {"in": "path", "name": "run_id", "required": True, "schema": {"type": "string"},
           "description": "The run's id (`id` of a run, `X-Flowkit-Run`)."}
_NAME = {"in": "path", "name": "name", "required": True, "schema": {"type": "string"},
         "description": "A served workflow's name."}


def _schedule_body(plugin: MarshmallowPlugin) -> dict[str, Any]:
    """ScheduleBody as JSON Schema, with what marshmallow's cannot say: cron or every."""
    body = plugin.converter.schema2jsonschema(schemas.ScheduleBody)
    body["oneOf"] = [{"required": ["cron"]}, {"required": ["every"]}]
    return body


def _schedule_paths(spec: APISpec, p: str) -> None:
    sid = {"in": "path", "name": "schedule_id", "required": True, "schema": {"type": "string"},
           "description": "The schedule's id."}
    spec.path(f"{p}/schedules", operations={
        "get": {"operationId": "listSchedules", "summary": "Every schedule, paused or not.",
                "responses": _responses({200: "ScheduleList"}, (*_AUTH, 503))},
        "post": {"operationId": "createSchedule",
                 "summary": "Create (or replace, by id) a schedule: a run of `workflow` with "
                            "`input` at every tick of `cron` (in `timezone`) or `every` "
                            "seconds; one run per tick whatever the number of beats.",
                 "requestBody": {"required": True, "content": {_JSON: {
                     "schema": {"$ref": "#/components/schemas/ScheduleBody"}}}},
                 # 409: the id is a schedule the code declares (Workflow(schedules=...))
                 "responses": _responses({201: "ScheduleInfo"},
                                         (*_AUTH, 400, 404, 409, 413, 415, 503))},
    })
    spec.path(f"{p}/schedules/{{schedule_id}}", operations={
        "get": {"operationId": "getSchedule", "parameters": [sid],
                "responses": _responses({200: "ScheduleInfo"}, (*_AUTH, 404, 503))},
        "delete": {"operationId": "deleteSchedule", "parameters": [sid],
                   "responses": _responses({204: {"description": "Deleted."}},
                                           (*_AUTH, 404, 503))},
    })
    for action in ("pause", "resume"):
        spec.path(f"{p}/schedules/{{schedule_id}}/{action}", operations={"post": {
            "operationId": f"{action}Schedule", "parameters": [sid],
            "responses": _responses({200: "ScheduleInfo"}, (*_AUTH, 404, 413, 503))}})


def _start_operation(wf: Any, opts: ApiOptions, plugin: MarshmallowPlugin,
                     spec: APISpec) -> dict[str, Any]:
    if wf.input_schema is not None:
        spec.components.schema(_component_name(wf.name), schema=wf.input_schema)
        body_schema: Any = _component_name(wf.name)
    else:
        body_schema = {}
    started = {_JSON: {"schema": "StartedRun"}}
    run_headers = {h: h for h in ("Location", "X-Flowkit-Run", "X-Flowkit-Token")}
    links = {
        "GetRun": {"operationId": "getRun", "parameters": {"run_id": "$response.body#/id"}},
        "GetOutput": {"operationId": "getOutput",
                      "parameters": {"run_id": "$response.body#/id"}},
        "GetEvents": {"operationId": "getEvents",
                      "parameters": {"run_id": "$response.body#/id"}},
        "CancelRun": {"operationId": "cancelRun",
                      "parameters": {"run_id": "$response.body#/id"}},
    }
    return {
        "operationId": _operation_id("start_", wf.name),
        "summary": f"Start a run of {wf.name}.",
        "description": (wf.description + "\n\n" if wf.description else "") +
        "Answers 202 at once (200 for an idempotent replay, or when the run ended within "
        "the wait); with ?wait= (or Prefer: wait=) holds until the run ends or the wait "
        f"runs out (at most {opts.max_wait:g} s here: longer waits are cut to it); with "
        "Accept: text/event-stream or application/x-ndjson answers 200 with a stream of "
        "the run's events that ends after its latest terminal event. "
        "An empty body is the input {}.",
        "parameters": [
            *_args(schemas.StartArgs, plugin),
            _header("Idempotency-Key", {"type": "string", "pattern": r"^[\x21-\x7e]{1,255}$"},
                    "Same key, same input: the same run (200, `created` false); same key, "
                    "another input: 409."),
            _header("Prefer", {"type": "string"},
                    "`wait=<seconds>`, like ?wait= (which wins); a wait that is not a number "
                    "is a 400."),
        ],
        "requestBody": {"required": has_required_fields(wf.input_schema),
                        "content": {_JSON: {"schema": body_schema}}},
        "responses": _responses({
            200: {"description": "The run ended within the wait, an idempotent replay "
                                 "(`created` false), or (Accept) the stream of its events.",
                  "headers": {**run_headers, "Preference-Applied": "Preference-Applied",
                              "Cache-Control": "Cache-Control"},
                  "content": {**started, **_STREAMS}, "links": links},
            202: {"description": "Started (still queued or running).",
                  "headers": {**run_headers, "Preference-Applied": "Preference-Applied"},
                  "content": started, "links": links},
        }, (400, *_AUTH, 409, 413, 415, 429, 503)),
    }


def build_spec(api: ApiState) -> dict[str, Any]:
    spec, plugin = _plugin()
    for scheme, definition in _SECURITY_SCHEMES.items():
        spec.components.security_scheme(scheme, definition)
    for name, header in _HEADERS.items():
        spec.components.header(name, header)
    for name in ("Error", "Run", "StartedRun", "RunToken", "RunPage", "EventPage", "Output", "WorkflowInfo",
                 "Delivered", "EventSent", "ScheduleInfo", "ScheduleList",
                 "WorkflowList", "Trace", "Worker", "Health"):
        spec.components.schema(name, schema=getattr(schemas, name))
    spec.components.schema("SseEvent", component=_SSE_EVENT)
    spec.components.schema("ScheduleBody", component=_schedule_body(plugin))
    for name, response in _error_responses().items():
        spec.components.response(name, response)
    p = api.url_prefix
    opts = api.options

    spec.path(f"{p}/workflows", operations={"get": {
        "operationId": "listWorkflows",
        "summary": "The served workflows and their input schemas (JSON Schema).",
        "responses": _responses({200: "WorkflowList"}, _AUTH)}})
    spec.path(f"{p}/workflows/{{name}}", operations={"get": {
        "operationId": "getWorkflow", "summary": "One workflow.", "parameters": [_NAME],
        "responses": _responses({200: "WorkflowInfo"}, (*_AUTH, 404))}})
    for wf in api.workflows():
        spec.path(f"{p}/workflows/{wf.name}/runs",
                  operations={"post": _start_operation(wf, opts, plugin, spec)})

    spec.path(f"{p}/runs", operations={"get": {
        "operationId": "listRuns", "summary": "Runs, newest first.",
        "parameters": _args(schemas.ListRunsArgs, plugin,
                            limit={"maximum": opts.max_page_size, "default": opts.page_size}),
        "responses": _responses({200: "RunPage"}, (400, *_AUTH, 503))}})
    spec.path(f"{p}/runs/{{run_id}}", operations={"get": {
        "operationId": "getRun", "summary": "A run's record.", "parameters": [_RUN_ID],
        "security": _RUN_READ, "responses": _responses({200: "Run"}, _RUN)}})
    spec.path(f"{p}/runs/{{run_id}}/output", operations={"get": {
        "operationId": "getOutput", "summary": "A succeeded run's output (409 until then).",
        "parameters": [_RUN_ID], "security": _RUN_READ,
        "responses": _responses({200: "Output"}, (*_RUN, 409))}})
    spec.path(f"{p}/runs/{{run_id}}/events", operations={"get": {
        "operationId": "getEvents",
        "summary": "The run's events: a JSON page, or with Accept: text/event-stream an SSE "
                   "stream (history, then the live tail, ending after the run's latest "
                   "terminal event).",
        "parameters": [
            _RUN_ID,
            *_args(schemas.EventsArgs, plugin, limit={
                "description": f"Events per page; at most {opts.events_page} are answered "
                               "(a larger limit is cut to it)."}),
            _header("Last-Event-ID", {"type": "string", "pattern": schemas.CURSOR_PATTERN},
                    "SSE resume cursor (an event id; wins over ?after=; 400 if not one). "
                    "A cursor past the run's last event is 404."),
        ],
        "security": _RUN_READ,
        "responses": _responses({200: {
            "description": "A page of events (JSON), or (Accept) the SSE stream.",
            "headers": {"Cache-Control": "Cache-Control"},
            "content": {_JSON: {"schema": "EventPage"}, _SSE: _STREAMS[_SSE]}},
            204: {"description": "SSE resumed from the ended run's last event: nothing "
                                 "more will come (a browser's EventSource stops)."}},
            (400, *_RUN, 429))}})
    spec.path(f"{p}/runs/{{run_id}}/stream", operations={"get": {
        "operationId": "streamRun",
        "summary": "WebSocket: the run's events as JSON text messages, resumable with ?after= "
                   "(or by sending {\"resume\": \"<event id>\"}); closes (1000) after the "
                   "run's latest terminal event, with 1012 when the server restarts, with 4001 "
                   "when the run token that opened it expires, with 4004 when a resume "
                   "names a cursor past the run's last event, or with 1013 when its caller's "
                   "streams filled up since its handshake's check (429).",
        "parameters": [
            _RUN_ID, *_args(schemas.StreamArgs, plugin),
            *(_header(name, schema, description, required=True)
              for name, (schema, description) in _WEBSOCKET_REQUEST.items()),
        ],
        "security": _RUN_READ,
        "responses": _responses({
            101: {"description": "Switching to the WebSocket protocol.",
                  "headers": {"Upgrade": "Upgrade", "Connection": "ConnectionUpgrade",
                              "Sec-WebSocket-Accept": "Sec-WebSocket-Accept"}},
            400: {"description": "Not a WebSocket handshake (no `Upgrade: websocket` with "
                                 "`Connection: Upgrade`: answered before the credentials are "
                                 "looked at), a handshake without Sec-WebSocket-Key or with "
                                 "a version other than 13 (the answer then names 13 in "
                                 "Sec-WebSocket-Version), or an invalid ?after=.",
                  "headers": {"Sec-WebSocket-Version": {
                      "required": False, "schema": {"type": "string", "enum": ["13"]}}},
                  "content": {_JSON: {"schema": "Error"}}},
        }, (*_RUN, 429))}})
    for action, status, summary in (
        ("cancel", 200, "Cancel a queued or running run (409 once it ended)."),
        ("retry", 202, "Resume a failed run from its failed step (409 unless it failed)."),
    ):
        spec.path(f"{p}/runs/{{run_id}}/{action}", operations={"post": {
            "operationId": f"{action}Run", "summary": summary, "parameters": [_RUN_ID],
            "responses": _responses({status: "Run"}, (*_RUN, 409, 413))}})
    spec.path(f"{p}/runs/{{run_id}}/token", operations={"post": {
        "operationId": "runToken",
        "summary": "A fresh run token for the run (what a page following it over a WebSocket "
                   "carries as ?token=, where an API key must never go). An API key's or "
                   "your app's authorization; a run token may not make another (403).",
        "parameters": [_RUN_ID],
        "responses": _responses({200: "RunToken"}, (*_RUN, 413))}})
    spec.path(f"{p}/runs/{{run_id}}/input/{{name}}", operations={"post": {
        "operationId": "sendInput",
        "summary": "Answer a run paused in wait_for_input(name): the JSON body is the value, "
                   "held to the schema the wait published (in its run.waiting event and the "
                   "run's `waits`). 202 once accepted (`resumed`, or `delivered` while it still "
                   "waits for more); the same value again is 200 (`same`); 409 when the run "
                   "does not wait for that input (or another value was accepted first). A "
                   "run token may answer its own run.",
        "parameters": [_RUN_ID, {"in": "path", "name": "name", "required": True,
                                 "schema": {"type": "string"}, "description": "The input's name."},
                       *_args(schemas.InputArgs, plugin)],
        "requestBody": {"required": True, "content": {_JSON: {"schema": {}}}},
        "security": _RUN_READ,
        "responses": _responses({200: "Delivered", 202: "Delivered"}, (*_RUN, 400, 409, 413, 415))}})
    spec.path(f"{p}/events/{{key}}", operations={"post": {
        "operationId": "sendEvent",
        "summary": "Send an event under `key`: every run waiting for it in "
                   "wait_for_event(key) wakes with the JSON body as its data; kept for waits "
                   "that begin later and look back (FLOWKIT_EVENT_LOOKBACK_SECONDS).",
        "parameters": [{"in": "path", "name": "key", "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                        "description": "The event's key, e.g. `payment:42`."}],
        "requestBody": {"required": False, "content": {_JSON: {"schema": {}}}},
        "responses": _responses({202: "EventSent"}, (*_AUTH, 400, 413, 415, 503))}})
    _schedule_paths(spec, p)
    spec.path(f"{p}/runs/{{run_id}}/trace", operations={"get": {
        "operationId": "getTrace", "summary": "The run's trace spans.", "parameters": [_RUN_ID],
        "security": _RUN_READ, "responses": _responses({200: "Trace"}, _RUN)}})
    spec.path(f"{p}/runs/{{run_id}}/watch", operations={"get": {
        "operationId": "watchRun",
        "summary": "A page that follows the run live (over the WebSocket, with the run token "
                   "of ?token=), resuming after drops and refreshes. The page itself is "
                   "public: it reads nothing without a token.",
        "parameters": [_RUN_ID, {"in": "query", "name": "token", "required": False,
                                 "schema": {"type": "string"},
                                 "description": "The run token the page uses."}],
        "security": _PUBLIC,
        "responses": {"200": {"description": "The watch page.",
                              "content": {"text/html": _TEXT}}}}})
    spec.path(f"{p}/openapi.json", operations={"get": {
        "operationId": "getOpenApi", "summary": "This document.",
        "responses": _responses({200: {"description": "OpenAPI 3.", "content": {
            _JSON: {"schema": {"type": "object"}}}}}, _AUTH)}})
    spec.path(f"{p}/healthz", operations={"get": {
        "operationId": "health",
        "summary": "What this web process sees of the deployment: Redis, and (to a caller "
                   "with full access only) the live workers and the problems, such as the "
                   "served workflows' queues that no live worker consumes.",
        "security": [{}, *_KEY], "responses": _responses({200: "Health"}, (503,))}})
    spec.path(f"{p}/workers", operations={"get": {
        "operationId": "listWorkers",
        "summary": "The live workers (queues, pool, concurrency, last beat), the steps they "
                   "run, and the served workflows' queues no live worker consumes (the "
                   "dashboard's Workers page).",
        "responses": _responses({200: {"description": "Workers, running steps, unconsumed "
                                       "queues.", "content": {_JSON: {"schema": {
                                           "type": "object"}}}}}, (*_AUTH, 503))}})
    spec.path(f"{p}/runs/summary", operations={"get": {
        "operationId": "summariseRuns",
        "summary": "For each run of ?ids=a,b,...: its step progress, tokens and cost (what a "
                   "runs list shows beyond the record).",
        "parameters": [{"in": "query", "name": "ids", "required": True,
                        "schema": {"type": "string", "pattern": "[^,\\s]"},
                        "description": "Run ids, comma-separated (at most 100)."}],
        "responses": _responses({200: {"description": "Summaries by run id.", "content": {
            _JSON: {"schema": {"type": "object"}}}}}, (400, *_AUTH, 404, 503))}})
    spec.path(f"{p}/metrics", operations={"get": {
        "operationId": "metrics",
        "summary": "Prometheus metrics of this web process and of the deployment (runs by "
                   "workflow and state, queues, steps, LLM calls, stream subscribers); see "
                   "the README's Metrics section. Needs full access (an API key) unless "
                   "FLOWKIT_API_METRICS_OPEN.",
        "security": _PUBLIC if opts.metrics_open else _KEY,
        "responses": _responses({200: {"description": "The Prometheus text format (or "
                                       "OpenMetrics, when the Accept header asks for it).",
                                       "content": {"text/plain": _TEXT}}},
                                () if opts.metrics_open else _AUTH)}})
    doc = spec.to_dict()
    # With FLOWKIT_API_OPEN (local development) credentials are optional.
    doc["security"] = [*_KEY, {}] if opts.open else _KEY
    if opts.open:
        for operations in doc["paths"].values():
            for operation in operations.values():
                if operation.get("security"):
                    operation["security"] = [*operation["security"], {}]
    return doc
