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
import threading

from flask import request
from simple_websocket import ConnectionClosed
from wsproto.events import TextMessage
from wsproto.frame_protocol import FrameProtocol
from wsproto.utilities import LocalProtocolError

from ..events import parse_cursor
from .relay import RelayEvent, Subscriber

#: Seconds between two looks at the client's messages while no event arrives.
_POLL = 1.0
#: Longest wait for the client's answer to our close frame.
_CLOSE_WAIT = 2.0


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

    Every write to the socket holds ``lock``, simple-websocket's own (pings, pongs, the
    close frame) included, through :class:`_SerialSocket`: a ping sent while a frame is
    half written would corrupt the stream. The hub only ever tries the lock.
    """

    def __init__(self, ws) -> None:
        self.ws = ws
        self.sock: socket.socket = ws.sock
        offered = request.headers.get("Sec-WebSocket-Extensions", "")
        self.compressed = "permessage-deflate" in offered.lower()
        # A socket with a timeout would make even a MSG_DONTWAIT send wait for room.
        self.direct = isinstance(self.sock, socket.socket) and self.sock.gettimeout() is None
        self.lock = threading.Lock()
        self._rest = b""  # the unsent tail of a frame: goes out before anything else
        self._unwritten = b""  # whole frames the hub could not start (the lock was taken)
        ws.sock = _SerialSocket(self)

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
        if not self.lock.acquire(blocking=False):
            self._unwritten = data  # simple-websocket is writing: the client's thread will
            return False
        try:
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            self._rest = data[sent:]
        finally:
            self.lock.release()
        return not self._rest

    def flush(self) -> None:
        with self.lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        data, self._rest, self._unwritten = self._rest + self._unwritten, b"", b""
        if data:
            self.sock.sendall(data)

    def send_all(self, events: list[RelayEvent]) -> None:
        """All frames in one blocking write: one ``sendall`` per batch, not one per event."""
        data = self.frames(events)
        with self.lock:
            self._flush_locked()
            self.sock.sendall(data)


class _SerialSocket:
    """The socket as simple-websocket sees it once a sink is attached: its writes wait for the
    sink's lock and the tail of a half-written frame; everything else is the socket's."""

    def __init__(self, sink: FrameSink) -> None:
        self._sink = sink

    def send(self, data: bytes, *flags: int) -> int:
        with self._sink.lock:
            if self._sink._rest:
                rest, self._sink._rest = self._sink._rest, b""
                self._sink.sock.sendall(rest)
            self._sink.sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self._sink.sock, name)


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
                sub.close()  # unsubscribed before the closing handshake's wait
                if sub.shutting_down:  # 1012 Service Restart: reconnect with the last id
                    close(ws, 1012, "server restarting; reconnect with your last event id")
                else:
                    close(ws, 1000, "run ended")
                return
            cursor = _resume_cursor(ws.receive(timeout=0))
            if cursor is not None:
                sub.resume(cursor)
    except OSError:
        return  # the client went away (ConnectionClosed is flask-sock's to handle)
    finally:
        sub.close()


def close(ws, code: int, message: str) -> None:
    """Close with a close frame, then wait briefly for the client's answer. Closing the TCP
    connection before that answer arrives makes the kernel reply to it with a reset, and a
    reset can destroy frames the client has received but not yet read: the last events."""
    try:
        ws.close(code, message)
    except ConnectionClosed:
        return
    ws.thread.join(_CLOSE_WAIT)  # simple-websocket's reader ends when the answer arrives
