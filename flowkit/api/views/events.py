"""A run's events: history as JSON, live over SSE and over a WebSocket (the relay)."""

from __future__ import annotations

from flask import Blueprint, g, request
from flask_sock import Sock

from ...engine import control
from ...events import START, parse_cursor
from .. import schemas
from ..errors import ApiError
from ..requests import negotiated_stream, query
from ..state import state
from ..streaming import SSE, stream_response
from ..ws import relay
from .runs import load_run


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/runs/<run_id>/events")(get_events)
    sock.route("/runs/<run_id>/stream", bp=bp)(stream)

    @bp.before_request
    def _check_socket() -> None:
        # Checked before the WebSocket handshake, so a refusal is a plain HTTP error.
        if request.endpoint == f"{bp.name}.stream":
            _check_handshake()
            load_run(request.view_args["run_id"])
            g.flowkit_cursor = parse_cursor(query(schemas.StreamArgs).get("after")) or START


def _check_handshake() -> None:
    """A WebSocket upgrade the server cannot complete is a 4xx here, not an error inside it."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return  # a plain GET: flask-sock answers 400
    if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise ApiError(400, "bad_request", "Only WebSocket version 13 is supported: send "
                       "Sec-WebSocket-Version: 13.", headers={"Sec-WebSocket-Version": "13"})
    if "Sec-WebSocket-Key" not in request.headers:
        raise ApiError(400, "bad_request", "A WebSocket handshake needs Sec-WebSocket-Key.")


def get_events(run_id: str):
    current = state()
    load_run(run_id)
    args = query(schemas.EventsArgs)
    after = args.get("after")
    if negotiated_stream() == SSE:
        cursor = parse_cursor(request.headers.get("Last-Event-ID")) or parse_cursor(after)
        sub = current.hub.subscribe(run_id, cursor or START)
        return stream_response(sub, current.options.ping_interval, SSE)
    limit = min(args.get("limit", current.options.events_page), current.options.events_page)
    after = parse_cursor(after) or START
    page = control.history(run_id, after, limit, store=current.store)
    return {"events": [e.to_dict() for e in page], "next": page[-1].id if page else after,
            "done": bool(page) and page[-1].terminal}


def stream(ws, run_id: str):
    relay(ws, state().hub.subscribe(run_id, g.flowkit_cursor))
