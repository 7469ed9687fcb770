"""The WebSocket relay: the same semantics as SSE over flask-sock.

Each message to the client is one event as JSON (``{"id", "type", ...}``). The
client may send ``{"resume": "<event id>"}`` at any time to be served again from
that cursor (e.g. after it discarded what it had), and ``{"ping": <any JSON>}`` to be
answered ``{"pong": <the same>}`` (not an event: it has no id): a browser cannot see
protocol pings, so this is how its client notices a connection that died without a
reset (a sleeping laptop, a NAT that forgot it) and reconnects. The socket closes after
the terminal event; simple-websocket sends protocol pings every ping interval so
proxies keep an idle socket open. A socket opened with ``?status=true`` is also sent
``{"status": "degraded", ...}`` when the relay cannot read Redis, and ``{"status": "live"}``
when it can again (no id either): a page can say its events are late rather than "live".

Once a client is caught up, the relay hub writes its events to the socket itself
(:class:`FrameSink`), without waking the client's thread; an event's frame is
built once for every client that did not negotiate compression.

A stream opened with a run token closes when the token expires, with code 4001 (from the
range RFC 6455 section 7.4.2 leaves to applications): the client reconnects with a fresh
token and its last event id.

The client's thread sleeps until it has something to do: simple-websocket's reader
rings it (:class:`_Doorbell`) when the client sends a message or the connection ends,
instead of the thread looking every second. A thousand followers no longer wake a
thousand threads a second, each taking the GIL from the hub in the middle of a fan-out.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable

from flask import request
from simple_websocket import ConnectionClosed
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from ..errors import FlowkitError, StoreUnavailable
from ..events import parse_cursor
from .auth import STREAM_EXPIRED, TOKEN_EXPIRED
from .relay import RelayEvent, Subscriber
from .requests import strict_loads
from .stalls import bound_writes
from .streaming import GONE

#: Longest sleep of a client's thread between two looks at its socket; the doorbell
#: wakes it sooner (a message, the end of the connection): this is only a safety net.
POLL_SECONDS = 30.0
#: Longest wait for the client's answer to our close frame.
_CLOSE_WAIT = 2.0
#: The close code of a stream whose run token expired.
TOKEN_EXPIRED_CLOSE = 4001
#: The close code of a socket asked to resume past the run's last event (the handshake's
#: 404 for the same cursor).
NOT_FOUND_CLOSE = 4004
#: Resumes a socket may send at once, and per second after that: each is a Redis read of
#: the run's events from its cursor, and one socket sent 20,000 in 4 s.
RESUME_BURST = 20
RESUME_RATE = 5.0
#: The close code of a socket that sent resumes faster (RFC 6455's "Policy Violation").
POLICY_CLOSE = 1008
#: The close code of a socket refused once upgraded (its caller's streams filled up since
#: the handshake's check): RFC 6455's "Try Again Later".
TRY_AGAIN_LATER_CLOSE = 1013


def _client_message(message: str | bytes | None) -> dict:
    """A message from the client as a JSON object; anything else is ignored (``{}``)."""
    if not message:
        return {}
    try:  # strict: a pong of NaN is a frame JSON.parse refuses
        data = strict_loads(message)
    except (ValueError, RecursionError):  # RecursionError: nested past Python's limit
        return {}
    return data if isinstance(data, dict) else {}


class BadResume(FlowkitError, ValueError):
    """A ``resume`` message whose cursor is no event id."""


def _resume_cursor(data: dict) -> str | None:
    """The cursor a message asks to resume from; None when it asks for none. One that is no
    event id raises BadResume: it was ignored (``"abc"``, ``0``, an id past Redis's), or
    replayed the whole history (``""``), where the handshake and SSE answer it ``400``."""
    if "resume" not in data and "after" not in data:
        return None
    value = data.get("resume", data.get("after"))
    cursor = parse_cursor(value) if isinstance(value, str) and value.strip() else None
    if cursor is None:
        shown = json.dumps(value)
        shown = shown if len(shown) <= 48 else f"<{len(shown)} characters>"
        raise BadResume(f"validation_error: resume {shown} is not an event id; reconnect "
                        "with your last one")
    return cursor


def plain_frame(event: RelayEvent) -> bytes:
    """The event as a server's uncompressed text frame, built once and shared by every client.

    RFC 6455 section 5.2: FIN and the text opcode, the payload's length (7 bits, or 126 and
    16 bits, or 127 and 64 bits), no mask from a server, then the payload. Built here rather
    than by wsproto's FrameProtocol, whose construction per event cost more than the rest of
    the hub's work for a single subscriber (it is on every event's latency path)."""
    frame = event.frame
    if frame is None:
        frame = event.frame = text_frame(event.json.encode())
    return frame


def text_frame(payload: bytes) -> bytes:
    """``payload`` as an uncompressed text frame (valid with permessage-deflate too: its
    RSV1 bit is clear, and it leaves the compressor's context alone)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


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
        self._send = self.sock.send
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
        if len(events) == 1:
            return plain_frame(events[0])
        return b"".join([plain_frame(e) for e in events])

    def try_send(self, events: list[RelayEvent]) -> bool:
        if len(events) == 1 and not self.compressed and self.ws.connected:
            data = events[0].frame or plain_frame(events[0])  # once per subscriber per event
        else:
            data = self.frames(events)
        lock = self.lock
        if not lock.acquire(blocking=False):
            self._unwritten = data  # simple-websocket is writing: the client's thread will
            return False
        try:
            try:
                sent = self._send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return True
            self._rest = data[sent:]
            return False
        finally:
            lock.release()

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


class _Allowance:
    """A token bucket of ``burst`` resumes, refilled at ``rate`` a second."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class _Doorbell(threading.Event):
    """simple-websocket's event for "a message came, or the connection ended", which also
    wakes the subscriber's thread (its reader thread sets it; ``receive`` waits on it)."""

    def __init__(self, sub: Subscriber) -> None:
        super().__init__()
        self._sub = sub

    def set(self) -> None:
        super().set()
        self._sub.poke()


def relay(ws, sub: Subscriber, beyond: Callable[[str], str | None] = lambda _: None,
          poll: float = POLL_SECONDS, stall: float | None = None) -> None:
    """Send ``sub``'s events over ``ws`` until the run's terminal event, the client leaves, or
    the run token that opened it expires (``sub.expired``). ``beyond(cursor)``: why a resume
    cursor is past the run's events (None: it is not); such a resume closes the socket with
    :data:`NOT_FOUND_CLOSE`, as the handshake answers it 404: served from there, it would
    wait for ever. ``poll``: the longest wait between two looks at the run (the app's ping
    interval, when shorter): a run expired or deleted while followed closes the socket with
    :data:`NOT_FOUND_CLOSE` (it stayed open for ever)."""
    sink = FrameSink(ws)
    if stall is not None:  # a peer that takes nothing is let go (flowkit.api.stalls)
        bound_writes(sink.sock, stall)
    resumes = _Allowance(RESUME_BURST, RESUME_RATE)
    ws.event = _Doorbell(sub)
    sub.poke()  # what the reader signalled before the doorbell was in place: look once
    try:
        if sink.direct:
            sub.attach(sink)
        while ws.connected:
            batch = sub.next_batch(timeout=poll)
            if sub.expired:  # what was read after the token's end is the next token's
                sub.close()
                close(ws, TOKEN_EXPIRED_CLOSE, f"{TOKEN_EXPIRED}: {STREAM_EXPIRED}")
                return
            if batch:
                sink.send_all(batch)
            elif not sub.done and sub.vanished(every=poll):
                sub.close()
                close(ws, NOT_FOUND_CLOSE, f"not_found: {GONE}")
                return
            if sub.wants_status and (said := sub.status()) is not None:
                ws.sock.send(text_frame(json.dumps(said).encode()))  # not an event: no id
            if sub.done:
                sub.close()  # unsubscribed before the closing handshake's wait
                if sub.shutting_down:  # 1012 Service Restart: reconnect with the last id
                    close(ws, 1012, "server restarting; reconnect with your last event id")
                else:
                    close(ws, 1000, "run ended")
                return
            # Every message that came: one ring of the doorbell may stand for several.
            while (message := ws.receive(timeout=0)) is not None:
                data = _client_message(message)
                if "ping" in data:  # uncompressed: the hub may be compressing an event
                    ws.sock.send(text_frame(json.dumps({"pong": data["ping"]}).encode()))
                try:
                    cursor = _resume_cursor(data)
                except BadResume as exc:
                    sub.close()
                    close(ws, POLICY_CLOSE, str(exc)[:123])  # a close reason's limit
                    return
                if cursor is not None and not resumes.take():  # before its Redis reads
                    sub.close()
                    close(ws, POLICY_CLOSE, f"too_many_resumes: more than {RESUME_BURST} at "
                                            f"once or {RESUME_RATE:g} a second; reconnect "
                                            "with your last event id")
                    return
                if cursor is not None and (why := _past_the_end(beyond, cursor)):
                    sub.close()
                    close(ws, NOT_FOUND_CLOSE, f"not_found: {cursor} is past the run's events "
                                               f"({why})"[:123])  # a close reason's limit
                    return
                if cursor is not None:
                    sub.resume(cursor)
    except OSError:
        return  # the client went away (ConnectionClosed is flask-sock's to handle)
    finally:
        sub.close()


def _past_the_end(beyond: Callable[[str], str | None], cursor: str) -> str | None:
    """``beyond(cursor)``; None while Redis cannot say (the resume is served, as it was
    before this check: the hub reads from there once Redis is back). The socket is open:
    an error here would be answered as HTTP inside it."""
    try:
        return beyond(cursor)
    except StoreUnavailable:
        return None


def close(ws, code: int, message: str) -> None:
    """Close with a close frame, then wait briefly for the client's answer. Closing the TCP
    connection before that answer arrives makes the kernel reply to it with a reset, and a
    reset can destroy frames the client has received but not yet read: the last events.

    A client that does not answer in time (stalled, gone, a slow reader) has its connection
    shut down here, in this socket's thread: left open, gunicorn's gthread worker closed it
    in its one main loop, waiting up to 2 s for the client's end, one connection after
    another, so a run ending with 35 such followers stopped the process answering anything
    for 18 s (and with more, its arbiter killed it, dropping every stream). The shutdown
    sends what is queued, then the end (no reset): the kernel delivers it on its own."""
    try:
        ws.close(code, message)
    except ConnectionClosed:
        return
    ws.thread.join(_CLOSE_WAIT)  # simple-websocket's reader ends when the answer arrives
    if ws.thread.is_alive():
        try:
            ws.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader, which closes the socket
        except OSError:
            return  # closed meanwhile
        ws.thread.join(_CLOSE_WAIT)
