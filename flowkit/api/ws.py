"""The WebSocket relay: the same semantics as SSE over flask-sock.

Each message to the client is one event as JSON (``{"id", "type", ...}``). The
client may send ``{"resume": "<event id>"}`` at any time to be served again from
that cursor (e.g. after it discarded what it had). The socket closes after the
terminal event; simple-websocket sends protocol pings every ping interval so
proxies keep an idle socket open.
"""

from __future__ import annotations

import json

from simple_websocket import ConnectionClosed
from wsproto.events import TextMessage

from .relay import Subscriber, parse_cursor

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


def send_all(ws, messages: list[str]) -> None:
    """Send each message as its own WebSocket message, all frames in one write.

    One ``sendall`` per batch instead of one ``send`` per event is what lets one
    subscriber receive tens of thousands of events per second.
    """
    if not ws.connected:
        raise ConnectionClosed(ws.close_reason, ws.close_message)
    frames = b"".join(ws.ws.send(TextMessage(data=message)) for message in messages)
    ws.sock.sendall(frames)


def relay(ws, sub: Subscriber) -> None:
    """Send ``sub``'s events over ``ws`` until the run's terminal event or the client leaves."""
    try:
        while ws.connected:
            batch = sub.next_batch(timeout=_POLL)
            if batch:
                send_all(ws, [event.json for event in batch])
            if sub.done:
                return
            cursor = _resume_cursor(ws.receive(timeout=0))
            if cursor is not None:
                sub.resume(cursor)
    finally:
        sub.close()
