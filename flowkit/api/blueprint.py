"""``create_blueprint``: the API as a Flask blueprint, its views one module per resource.

Every read is answered from Redis through :mod:`flowkit.engine.control` and the store
(run records and streams); nothing here runs a step or talks to a worker.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Blueprint, Flask, g, request
from flask_sock import Sock
from werkzeug.exceptions import HTTPException
from werkzeug.routing.exceptions import WebsocketMismatch

from ..engine import control
from ..metrics import install as install_metrics
from .auth import KEY, RUN
from .errors import ApiError, handle_host_errors, to_response
from .options import ApiOptions
from .origins import check_same_site
from .requests import ClosingConnections, check_body_size, check_path_text, finish_body
from .state import EXTENSION, ApiState, state
from .views import (
    docs,
    events,
    health,
    metrics,
    runs,
    schedules,
    summaries,
    ui,
    waits,
    workers,
    workflows,
)

#: Endpoints anyone may call: the load balancer's probe, the watch page's and the
#: dashboard's HTML (the pages read nothing without a run token or API credentials). ``metrics`` checks credentials
#: itself (unless FLOWKIT_API_METRICS_OPEN): it needs full access.
PUBLIC = {"healthz", "watch", "static", "metrics", "ui"}


class _DaemonThread(threading.Thread):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True


#: Largest message a WebSocket client may send (a resume or a ping is a few dozen bytes).
MAX_CLIENT_MESSAGE = 64 * 1024


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
        app.wsgi_app = ClosingConnections(app.wsgi_app)  # type: ignore[method-assign]
        install_metrics()  # this process's stream subscribers (and LLM calls, steps)
        app.register_error_handler(HTTPException, _routing_error)
        handle_host_errors(app)
        # flask-sock reads these for every WebSocket (the host app's own settings win):
        # protocol pings keep idle sockets alive through proxies, and simple-websocket's
        # reader thread must not keep a stopping process alive after its socket closed
        sock_options = app.config.setdefault("SOCK_SERVER_OPTIONS", {})
        sock_options.setdefault("ping_interval", resolved.ping_interval or None)
        sock_options.setdefault("thread_class", _DaemonThread)
        # a client sends resumes and pings: a bigger message closes its socket (1009)
        sock_options.setdefault("max_message_size", MAX_CLIENT_MESSAGE)

    bp.url_value_preprocessor(_canonical_ids)
    bp.before_request(_before)
    bp.after_request(_after)
    bp.register_error_handler(Exception, to_response)
    sock = Sock()
    for views in (
        workflows,
        runs,
        events,
        waits,
        schedules,
        docs,
        health,
        metrics,
        workers,
        summaries,
        ui,
    ):
        views.register(bp, sock)
    return bp


def _canonical_ids(endpoint: str | None, values: dict | None) -> None:
    """A run id in a path, as stored (a lower-case one was a 404), before any access check
    reads it: a run's token names its run upper-case."""
    if values and isinstance(values.get("run_id"), str):
        values["run_id"] = control.canonical_run_id(values["run_id"])


def _routing_error(exc: HTTPException):
    """404/405/400 raised before any view (no route matched): ours only under our prefix."""
    current = state()
    if request.blueprint == current.blueprint or current.owns(request.path):
        if isinstance(exc, WebsocketMismatch):  # a plain GET of the stream's URL
            exc = ApiError(400, "bad_request", "This URL is a WebSocket: open it with one "
                           "(new WebSocket(url) in a browser), or read the same events as "
                           "SSE from GET /runs/<id>/events with Accept: text/event-stream.")
        return to_response(exc)
    return exc


def _after(response):
    finish_body(response, state().options.max_body_bytes)
    return response


def _before() -> None:
    current = state()
    if current.hub.closing:  # told to stop (SIGTERM): a request goes to a process that stays
        raise ApiError(503, "server_restarting", "This server is shutting down: send the "
                       "request again (a stream resumes from its last event id).",
                       headers={"Retry-After": "1", "Connection": "close"})
    request.max_content_length = current.options.max_body_bytes
    check_body_size(current.options.max_body_bytes)
    check_path_text()
    if request.method == "OPTIONS":  # a CORS preflight: browsers send no credentials with
        return  # it, and Flask's answer (the allowed methods) reads nothing of a run
    if request.endpoint and request.endpoint.rpartition(".")[2] in PUBLIC:
        check_same_site(request, current.options.trusted_origins)
        return
    access = g.flowkit_access = current.auth.authenticate(request)
    if access.kind not in (KEY, RUN):  # no page of another site holds a key or run token
        check_same_site(request, current.options.trusted_origins)
