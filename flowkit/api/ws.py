"""The WebSocket relay: the same semantics as SSE over flask-sock.

Each message to the client is one event as JSON (``{"id", "type", ...}``). The
client may send ``{"resume": "<event id>"}`` at any time to be served again from
that cursor (e.g. after it discarded what it had). The socket closes after the
terminal event; simple-websocket sends protocol pings every ping interval so
proxies keep an idle socket open.

Once a client is caught up, the relay hub writes its events to the socket itself
(:class:`FrameSink`), without waking the client's thread; an event's frame is
built once for every client that did not negotiate compression.
"""

from __future__ import annotations

import json
import socket

from flask import request
from simple_websocket import ConnectionClosed
from wsproto.events import TextMessage
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import LocalProtocolError

from .relay import RelayEvent, Subscriber, parse_cursor

#: Seconds between two looks at the client's messages while no event arrives.
_POLL = 1.0


def _resume_cursor(message: str | bytes | None) -> str | None:
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    if isinstance(data, dict):
        value = data.get("resume", data.get("after"))
        return parse_cursor(value) if isinstance(value, str) else None
    return None


def plain_frame(event: RelayEvent) -> bytes:
    """The event as a server's uncompressed text frame, built once and shared by every client."""
    if event.frame is None:
        event.frame = FrameProtocol(client=False, extensions=[]).send_data(event.json, fin=True)
    return event.frame


class FrameSink:
    """Writes a subscriber's events to its WebSocket; see :class:`flowkit.api.relay.Sink`.

    A client that offered permessage-deflate may have it (simple-websocket accepts it), so
    its frames go through its own wsproto connection; every other client gets the shared
    frame bytes. ``try_send`` (the hub's thread) never blocks: it sends with
    ``MSG_DONTWAIT`` on the blocking socket and keeps what did not fit for ``flush``.
    """

    def __init__(self, ws) -> None:
        self.ws = ws
        offered = request.headers.get("Sec-WebSocket-Extensions", "")
        self.compressed = "permessage-deflate" in offered.lower()
        # A socket with a timeout would make even a MSG_DONTWAIT send wait for room.
        self.direct = isinstance(ws.sock, socket.socket) and ws.sock.gettimeout() is None
        self._rest = b""

    def frames(self, events: list[RelayEvent]) -> bytes:
        if not self.ws.connected:
            raise ConnectionClosed(self.ws.close_reason, self.ws.close_message)
        if self.compressed:
            try:
                return b"".join(self.ws.ws.send(TextMessage(data=e.json)) for e in events)
            except LocalProtocolError as exc:  # the connection is closing
                raise ConnectionClosed(self.ws.close_reason, str(exc)) from exc
        return b"".join([plain_frame(e) for e in events])

    def try_send(self, events: list[RelayEvent]) -> bool:
        data = self.frames(events)
        try:
            sent = self.ws.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        self._rest = data[sent:]
        return not self._rest

    def flush(self) -> None:
        rest, self._rest = self._rest, b""
        if rest:
            self.ws.sock.sendall(rest)

    def send_all(self, events: list[RelayEvent]) -> None:
        """All frames in one blocking write: one ``sendall`` per batch, not one per event."""
        self.ws.sock.sendall(self.frames(events))


def relay(ws, sub: Subscriber) -> None:
    """Send ``sub``'s events over ``ws`` until the run's terminal event or the client leaves."""
    sink = FrameSink(ws)
    try:
        if sink.direct:
            sub.attach(sink)
        while ws.connected:
            batch = sub.next_batch(timeout=_POLL)
            if batch:
                sink.send_all(batch)
            if sub.done:
                return
            cursor = _resume_cursor(ws.receive(timeout=0))
            if cursor is not None:
                sub.resume(cursor)
    except OSError:
        return  # the client went away (ConnectionClosed is flask-sock's to handle)
    finally:
        sub.close()
