"""A run's events: history as JSON, live over SSE and over a WebSocket (the relay)."""

from __future__ import annotations

from flask import Blueprint, Response, g, request
from flask_sock import Sock

from ...engine import control
from ...events import START, parse_cursor, past_the_end
from .. import schemas
from ..errors import ApiError
from ..relay import RelayEvent
from ..requests import access, negotiated_stream, query
from ..stalls import connection_socket, stall_seconds
from ..state import state
from ..streaming import SSE, VANISHED_CHECK, stream_response
from ..ws import POLL_SECONDS, TRY_AGAIN_LATER_CLOSE, close, relay
from .runs import load_run


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/runs/<run_id>/events")(get_events)
    sock.route("/runs/<run_id>/stream", bp=bp)(stream)

    @bp.before_request
    def _check_socket() -> None:
        # Checked before the WebSocket handshake, so a refusal is a plain HTTP error. A CORS
        # preflight (OPTIONS, no credentials) gets Flask's allowed methods: no run is read
        if request.endpoint == f"{bp.name}.stream" and request.method != "OPTIONS":
            _check_handshake()
            run_id = request.view_args["run_id"]
            load_run(run_id)
            args = query(schemas.StreamArgs)
            cursor = parse_cursor(args.get("after")) or START
            g.flowkit_cursor = _known(run_id, cursor, "after")
            g.flowkit_status = args.get("status", False)
            state().hub.check(access().stream_holder)


def _check_handshake() -> None:
    """A WebSocket upgrade the server cannot complete is a 4xx here, not an error inside it."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return  # a plain GET never gets here: routing refuses it (blueprint._routing_error)
    if request.headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise ApiError(400, "bad_request", "Only WebSocket version 13 is supported: send "
                       "Sec-WebSocket-Version: 13.", headers={"Sec-WebSocket-Version": "13"})
    if "Sec-WebSocket-Key" not in request.headers:
        raise ApiError(400, "bad_request", "A WebSocket handshake needs Sec-WebSocket-Key.")
    # what wsproto reads itself, and fails on with a UnicodeDecodeError or ValueError (a 500)
    for name in ("Connection", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"):
        if not request.headers.get(name, "").isascii():
            raise ApiError(400, "bad_request", f"Invalid {name} header.", {
                name: ["ASCII tokens only, comma-separated (e.g. a subprotocol name)."]})
    try:
        request.headers.get("Host", "").encode("latin-1").decode("idna")
    except UnicodeError:  # "xn--zz": a punycode label that does not decode
        raise ApiError(400, "bad_request", "Invalid Host header.", {
            "Host": ["A host name as DNS spells it, or an IP address, with its port."]}) from None
    for offer in request.headers.get("Sec-WebSocket-Extensions", "").split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        if name == "permessage-deflate" and not all(map(_window_bits, params)):
            raise ApiError(400, "bad_request", "Invalid Sec-WebSocket-Extensions header.", {
                "Sec-WebSocket-Extensions": [
                    "permessage-deflate's client_max_window_bits and server_max_window_bits "
                    "take a number (8 to 15, RFC 7692), or nothing."]})


def _window_bits(param: str) -> bool:
    """Whether wsproto can read a permessage-deflate parameter: its two ``*_max_window_bits``
    (read by prefix, as wsproto does) hold an integer (``int()`` raised on ``abc``). A
    number outside 8 to 15 is wsproto's to decline, as RFC 7692 asks: the handshake goes on
    without compression."""
    if not param.startswith(("client_max_window_bits", "server_max_window_bits")):
        return True
    _, equals, value = param.partition("=")
    if not equals:
        return True
    try:
        int(value)  # as wsproto reads it (int() takes the spaces around it)
    except ValueError:
        return False
    return True


def _known(run_id: str, cursor: str, field: str, last: RelayEvent | None = None) -> str:
    """``cursor``, unless it is past the run's last event (404, see
    :func:`flowkit.events.past_the_end`; not 400: the cursor is a well-formed id, this run
    has no such event, as a page past the end of a list). ``last``: the run's last event,
    when the caller read it already."""
    beyond = _beyond(run_id, cursor, last)
    if beyond:
        raise ApiError(404, "not_found", "No such event in this run.", {field: [
            f"{cursor} is past the run's events ({beyond}): resume from an id its stream "
            "gave you, or 0 for the whole history."]})
    return cursor


def _beyond(run_id: str, cursor: str, last: RelayEvent | None = None) -> str | None:
    """Why ``cursor`` is past the run's last event (:func:`flowkit.events.past_the_end`),
    or None. ``last``: the run's last event, when the caller read it already."""
    if cursor == START:
        return None
    last = last or state().hub.last_event(run_id)
    return past_the_end(cursor, last.id if last else None, live=not (last and last.terminal))


def get_events(run_id: str):
    current = state()
    run = load_run(run_id)
    args = query(schemas.EventsArgs)
    after = args.get("after")
    header = request.headers.get("Last-Event-ID")
    if header is not None and not schemas.is_cursor(header):
        raise ApiError(400, "validation_error", "Invalid Last-Event-ID header.", {
            "Last-Event-ID": ["An event id of this run's stream (e.g. 1700000000000-0), "
                              "or 0 for the whole history."]})
    if negotiated_stream() == SSE:
        if header is not None:
            cursor, field = parse_cursor(header), "Last-Event-ID"
        else:
            cursor, field = parse_cursor(after) or START, "after"
        last = current.hub.last_event(run_id) if cursor != START else None
        if last is not None and last.terminal and last.id == cursor:
            # resumed from the ended run's last event: a browser's EventSource reconnects
            # after every body that ends, for as long as its page is open (every ~3 s);
            # 204 is what SSE says to stop with
            return Response(status=204, headers={"Cache-Control": "no-cache"})
        sub = current.hub.subscribe(run_id, _known(run_id, cursor, field, last),
                                    expires_at=access().expires_at,
                                    holder=access().stream_holder,
                                    connection=connection_socket(request.environ))
        sub.wants_status = args.get("status", False)
        return stream_response(sub, current.options.ping_interval, SSE)
    limit = min(args.get("limit", current.options.events_page), current.options.events_page)
    after = _known(run_id, parse_cursor(after) or START, "after")
    page = control.history(run_id, after, limit, store=current.store)
    # an ended run read to its end is done, also when the page after its last event is
    # empty; a page ending on an end that a retry followed (run.failed, run.restarted, ...)
    # is not: a pager trusting done stopped reading a run that went on
    if page:
        done = page[-1].terminal and not control.history(run_id, page[-1].id, 1,
                                                         store=current.store)
    else:
        done = run.done and after != START
    return {"events": [e.to_dict() for e in page], "next": page[-1].id if page else after,
            "done": done}


def stream(ws, run_id: str):
    try:
        sub = state().hub.subscribe(run_id, g.flowkit_cursor, expires_at=access().expires_at,
                                    holder=access().stream_holder)
    except ApiError as refused:  # the quota filled since the handshake's check
        close(ws, TRY_AGAIN_LATER_CLOSE, refused.message[:123])  # a close reason's limit
        return
    sub.wants_status = g.flowkit_status
    ping = state().options.ping_interval
    relay(ws, sub, beyond=lambda cursor: _beyond(run_id, cursor),
          poll=min(POLL_SECONDS, max(ping, VANISHED_CHECK)) if ping else POLL_SECONDS,
          stall=stall_seconds(ping))
