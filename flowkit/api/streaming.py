"""Server-Sent Events and NDJSON responses that follow one run through the relay.

Both send the history after the cursor, then the live tail, and end after the run's
latest terminal event (:func:`flowkit.events.stream_ends`). Idle connections get a keep-alive (an SSE comment, an empty NDJSON
line) every ping interval, which is also how a vanished client is noticed. An event's text
is encoded once, on the relay's event, and shared by every response following the run.

A stream opened with a run token ends when the token expires: SSE sends a last message,
``event: token_expired`` (no id, so the cursor stays the last event's), whose data is the
API's error; a client reconnects with a fresh token and its last event id.

An SSE stream opened with ``?status=true`` is also told when the relay cannot read Redis
and when it can again: ``event: status`` (no id), its data ``{"status": "degraded", ...}``
or ``{"status": "live"}``; NDJSON lines are events only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from flask import Response, request, stream_with_context

from .auth import STREAM_EXPIRED, TOKEN_EXPIRED
from .relay import RelayEvent, Subscriber
from .stalls import bound_writes, connection_socket, stall_seconds

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def _sse(batch: list[RelayEvent]) -> bytes:
    """The batch as SSE messages; each event's bytes are built once for all its followers."""
    for e in batch:
        if e.sse is None:
            e.sse = f"id: {e.id}\ndata: {e.json}\n\n".encode()
    return b"".join([e.sse for e in batch])


def _ndjson(batch: list[RelayEvent]) -> bytes:
    for e in batch:
        if e.line is None:
            e.line = f"{e.json}\n".encode()
    return b"".join([e.line for e in batch])


_SSE_EXPIRED = ("event: token_expired\ndata: " + json.dumps(
    {"error": {"code": TOKEN_EXPIRED, "message": STREAM_EXPIRED, "fields": {}}}) + "\n\n").encode()


#: Least seconds between two looks at whether a followed run's events are gone from Redis.
VANISHED_CHECK = 1.0
#: A run expired or deleted while followed (what a reconnect would be answered, 404).
GONE = "This run no longer exists (its retention ran out, or it was deleted)."
_SSE_GONE = ("event: not_found\ndata: " + json.dumps(
    {"error": {"code": "not_found", "message": GONE, "fields": {}}}) + "\n\n").encode()


def _follow(sub: Subscriber, ping_interval: float, kind: str) -> Iterator[bytes]:
    encode, ping = (_sse, b": ping\n\n") if kind == SSE else (_ndjson, b"\n")
    try:
        while not sub.done:
            batch = sub.next_batch(timeout=ping_interval)
            if sub.expired:  # what was read after the token's end is the next token's
                if kind == SSE:
                    yield _SSE_EXPIRED
                return
            said = sub.status() if sub.wants_status else None
            if batch:
                yield encode(batch)
            elif not sub.done and said is None:
                if sub.vanished(every=max(ping_interval, VANISHED_CHECK)):
                    if kind == SSE:
                        yield _SSE_GONE
                    return
                yield ping
            if said is not None:  # no id: the client's cursor stays its last event's
                yield f"event: status\ndata: {json.dumps(said)}\n\n".encode()
    finally:
        sub.close()


def stream_response(
    sub: Subscriber, ping_interval: float, kind: str, status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    response = Response(
        stream_with_context(_follow(sub, ping_interval, kind)),
        status=status,
        mimetype=kind,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )
    response.call_on_close(sub.close)  # also when the server never started its body
    bound_writes(connection_socket(request.environ), stall_seconds(ping_interval))
    return response
