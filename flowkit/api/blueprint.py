"""The REST routes: workflows, runs, their events (JSON and SSE), and health.

Every read is answered from Redis through flowkit's core (run records and streams);
nothing here runs a step or talks to a worker.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import marshmallow
import redis
from flask import Blueprint, Flask, g, jsonify, request, url_for
from flask_sock import Sock
from werkzeug.exceptions import HTTPException

from .. import run as runs
from .. import trace
from ..events import history
from ..store import get_store
from ..workflow import Workflow
from . import schemas
from .auth import Access
from .errors import ApiError, to_response
from .options import ApiOptions
from .relay import START, Subscriber, parse_cursor
from .state import EXTENSION, ApiState, state
from .streaming import NDJSON, SSE, stream_response
from .ws import relay

#: Endpoints anyone may call: the load balancer's probe and the watch page's HTML
#: (the page itself reads nothing without a run token).
PUBLIC = {"healthz", "watch", "static"}
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9.]+)", re.IGNORECASE)


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


def create_blueprint(name: str = "flowkit", **options: Any) -> Blueprint:
    """The API as a blueprint; options are those of :class:`ApiOptions` (``keys``, ``open``,
    ``authorize``, ``workflows``, ...). Register it with ``app.register_blueprint(bp,
    url_prefix=...)``; its state goes to ``app.extensions["flowkit"]``."""
    bp = Blueprint(name, __name__, static_folder="static", static_url_path="/_flowkit_watch")

    @bp.record_once
    def _install(setup) -> None:
        app: Flask = setup.app
        if EXTENSION in app.extensions:
            raise ValueError("flowkit's API is already mounted on this app (once per app).")
        resolved = ApiOptions.resolve(app.config, **options)
        prefix = setup.url_prefix or ""
        app.extensions[EXTENSION] = ApiState(app, resolved, prefix, bp.name)
        app.register_error_handler(HTTPException, _routing_error)
        # flask-sock reads these for every WebSocket (the host app's own settings win):
        # protocol pings keep idle sockets alive through proxies, and simple-websocket's
        # reader thread must not keep a stopping process alive after its socket closed
        sock_options = app.config.setdefault("SOCK_SERVER_OPTIONS", {})
        sock_options.setdefault("ping_interval", resolved.ping_interval or None)
        sock_options.setdefault("thread_class", _DaemonThread)

    bp.before_request(_before)
    bp.register_error_handler(Exception, to_response)
    _routes(bp)
    return bp


def _routing_error(exc: HTTPException):
    """404/405/400 raised before any view (no route matched): ours only under our prefix."""
    current = state()
    if request.blueprint == current.blueprint or current.owns(request.path):
        return to_response(exc)
    return exc


def _before() -> None:
    current = state()
    request.max_content_length = current.options.max_body_bytes
    if request.content_length and request.content_length > current.options.max_body_bytes:
        raise ApiError(413, "payload_too_large",
                       f"Request body over {current.options.max_body_bytes} bytes.")
    if request.endpoint and request.endpoint.rpartition(".")[2] in PUBLIC:
        return
    g.flowkit_access = current.auth.authenticate(request)


def access() -> Access:
    return g.flowkit_access


def _args(schema: type[marshmallow.Schema]) -> dict[str, Any]:
    try:
        return schema().load(request.args.to_dict(), unknown=marshmallow.EXCLUDE)
    except marshmallow.ValidationError as exc:
        raise ApiError(400, "validation_error", "Invalid query parameters.", exc.messages) from None


# -- representations ----------------------------------------------------------------


def run_urls(run_id: str) -> dict[str, str]:
    bp = state().blueprint
    return {
        "self": url_for(f"{bp}.get_run", run_id=run_id),
        "output": url_for(f"{bp}.get_output", run_id=run_id),
        "events": url_for(f"{bp}.get_events", run_id=run_id),
        # relative like the others (url_for would make it absolute with a ws:// scheme)
        "stream": url_for(f"{bp}.get_run", run_id=run_id) + "/stream",
        "watch": url_for(f"{bp}.watch", run_id=run_id),
    }


def run_json(run: runs.Run) -> dict[str, Any]:
    return {**run.to_dict(), "urls": run_urls(run.id)}


def workflow_json(wf: Workflow) -> dict[str, Any]:
    from .openapi import json_schema

    return {
        "name": wf.name,
        "version": wf.version,
        "description": wf.description,
        "input_schema": json_schema(wf.input_schema),
        "output_schema": json_schema(wf.output_schema),
        "runs_url": url_for(f"{state().blueprint}.start_run", name=wf.name),
    }


def load_run(run_id: str, write: bool = False) -> runs.Run:
    run = runs.get_run(run_id)
    access().require_run(run.id, run.owner, write=write)
    return run


def _negotiated_stream() -> str | None:
    """SSE or NDJSON when the client names one explicitly (``*/*`` means JSON)."""
    accept = request.accept_mimetypes
    for kind in (SSE, NDJSON):
        if any(value == kind and quality > 0 for value, quality in accept):
            return kind if accept.quality(kind) >= accept.quality("application/json") else None
    return None


def _wait_seconds(query_wait: float | None) -> float | None:
    wait = query_wait
    if wait is None:
        found = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
        if found:
            try:
                wait = float(found.group(1))
            except ValueError:
                raise ApiError(400, "validation_error", "Invalid Prefer: wait=.",
                               {"Prefer": ["wait must be a number of seconds."]}) from None
    return None if wait is None else min(wait, state().options.max_wait)


def _read_input() -> Any:
    if not request.get_data(cache=True):
        return {}
    try:
        return request.get_json(force=True)
    except HTTPException as exc:
        if exc.code == 413:
            raise
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None


def _await_end(sub: Subscriber, seconds: float) -> None:
    """Read the run's stream until its terminal event or until ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    with sub:
        while not sub.done:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sub.next_batch(timeout=left)


# -- routes -------------------------------------------------------------------------


def _routes(bp: Blueprint) -> None:  # noqa: C901 - the route table reads best in one place
    sock = Sock()

    @bp.get("/workflows")
    def list_workflows():
        access().require_full()
        return {"workflows": [workflow_json(wf) for wf in state().workflows()]}

    @bp.get("/workflows/<name>")
    def get_workflow(name: str):
        access().require_full()
        return workflow_json(state().workflow(name))

    @bp.post("/workflows/<name>/runs")
    def start_run(name: str):
        current, who = state(), access()
        who.require_full()
        wf = current.workflow(name)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise ApiError(400, "validation_error", "Invalid Idempotency-Key header.", {
                "Idempotency-Key": ["1 to 255 visible ASCII characters."]})
        wait = _wait_seconds(_args(schemas.StartArgs).get("wait"))
        kind = _negotiated_stream()
        run = wf.start(_read_input(), idempotency_key=key, owner=who.owner)
        who.require_run(run.id, run.owner)  # an idempotency key of another owner's run
        token = current.auth.issue(run.id)
        headers = {"Location": url_for(f"{current.blueprint}.get_run", run_id=run.id),
                   "X-Flowkit-Run": run.id, "X-Flowkit-Token": token}
        if kind is not None:
            return stream_response(current.hub.subscribe(run.id, START),
                                   current.options.ping_interval, kind, headers=headers)
        if wait:
            _await_end(current.hub.subscribe(run.id, START), wait)
            run = runs.get_run(run.id)
            headers["Preference-Applied"] = f"wait={wait:g}"
        body = {**run_json(run), "created": run.created, "token": token,
                "token_expires_in": current.options.token_ttl}
        status = 200 if run.done or not run.created else 202
        return jsonify(body), status, headers

    @bp.get("/runs")
    def list_runs():
        current, who = state(), access()
        who.require_full()
        args = _args(schemas.ListRunsArgs)
        limit = args.get("limit", current.options.page_size)
        if limit > current.options.max_page_size:
            raise ApiError(400, "validation_error", "Invalid query parameters.",
                           {"limit": [f"At most {current.options.max_page_size}."]})
        page = runs.list_runs(args.get("workflow"), args.get("state"), limit, args.get("before"))
        cursor = page[-1].id if len(page) == limit else None
        if who.owner is not None:
            page = [r for r in page if r.owner == who.owner]
        return {"runs": [run_json(r) for r in page], "next": cursor}

    @bp.get("/runs/<run_id>")
    def get_run(run_id: str):
        return run_json(load_run(run_id))

    @bp.get("/runs/<run_id>/output")
    def get_output(run_id: str):
        run = load_run(run_id)
        if run.state != runs.SUCCEEDED:
            detail = f": {run.error.get('message')}" if run.error else ""
            raise ApiError(409, "no_output", f"Run {run.id} is {run.state}{detail}; "
                           "only a succeeded run has an output.")
        return {"output": run.output}

    @bp.get("/runs/<run_id>/events")
    def get_events(run_id: str):
        current = state()
        load_run(run_id)
        args = _args(schemas.EventsArgs)
        after = args.get("after")
        if _negotiated_stream() == SSE:
            cursor = parse_cursor(request.headers.get("Last-Event-ID")) or parse_cursor(after)
            sub = current.hub.subscribe(run_id, cursor or START)
            return stream_response(sub, current.options.ping_interval, SSE)
        limit = min(args.get("limit", current.options.events_page), current.options.events_page)
        after = parse_cursor(after) or START
        page = history(run_id, after, limit)
        return {"events": [e.to_dict() for e in page], "next": page[-1].id if page else after,
                "done": bool(page) and page[-1].terminal}

    @sock.route("/runs/<run_id>/stream", bp=bp)
    def stream(ws, run_id: str):
        relay(ws, state().hub.subscribe(run_id, g.flowkit_cursor))

    @bp.before_request
    def _check_socket() -> None:
        # Checked before the WebSocket handshake, so a refusal is a plain HTTP error.
        if request.endpoint != f"{bp.name}.stream":
            return
        load_run(request.view_args["run_id"])
        g.flowkit_cursor = parse_cursor(_args(schemas.StreamArgs).get("after")) or START

    @bp.post("/runs/<run_id>/cancel")
    def cancel_run(run_id: str):
        load_run(run_id, write=True)
        return run_json(runs.cancel(run_id))

    @bp.post("/runs/<run_id>/retry")
    def retry_run(run_id: str):
        run = load_run(run_id, write=True)
        state().workflow(run.workflow)
        return run_json(runs.retry(run_id)), 202

    @bp.get("/runs/<run_id>/trace")
    def get_trace(run_id: str):
        load_run(run_id)
        return {"spans": trace.read(run_id)}

    @bp.get("/runs/<run_id>/watch")
    def watch(run_id: str):
        return bp.send_static_file("watch.html")

    @bp.get("/openapi.json")
    def openapi():
        from .openapi import build_spec

        access().require_full()
        return build_spec(state())

    @bp.get("/healthz")
    def healthz():
        store = get_store()
        settings = store.settings
        recent = time.time() - max(settings.heartbeat_lapse, 3 * settings.heartbeat_interval)
        try:
            workers = store.redis.zcount(store.keys.workers, recent, "+inf")
        except redis.RedisError:
            raise ApiError(503, "redis_unreachable", "Redis does not answer.") from None
        return {"status": "ok", "redis": True, "workers": workers}
