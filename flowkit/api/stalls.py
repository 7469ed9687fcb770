"""A follower that takes nothing is let go.

Why: a stream's writes block until the peer takes the bytes, and a peer that stops reading
(a frozen tab, a client that opened the socket and went on with something else) but whose
kernel still acknowledges the connection never lets them go: its server thread, its relay
subscription and its token's stream quota stayed held long after the run ended (32 of them
and the run's own viewers were refused, 429), and a deploy's SIGTERM waited for them out the
whole graceful timeout. A write the peer accepts nothing of for two keep-alive intervals
now fails (``SO_SNDTIMEO``), which ends the stream and gives everything back: a live peer
takes a ping within one interval.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct

#: The least time a write may wait for a peer that takes nothing.
LEAST_STALL_SECONDS = 1.0


def stall_seconds(ping_interval: float) -> float:
    return max(LEAST_STALL_SECONDS, 2 * ping_interval)


def bound_writes(sock: object, seconds: float) -> None:
    """Make a blocking write to ``sock`` fail once the peer has taken nothing for
    ``seconds`` (a socket with a Python timeout has its own bound, and is left alone)."""
    if not isinstance(sock, socket.socket) or sock.gettimeout() is not None:
        return
    whole = int(seconds)
    with contextlib.suppress(OSError):  # not a TCP socket after all (a test's socketpair)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


def connection_socket(environ: dict) -> object:
    """The client's socket, as the WSGI servers flowkit runs under give it (gunicorn,
    werkzeug's); None under another."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def hung_up(sock: object) -> bool:
    """Whether the client closed its end of ``sock`` (read at once, nothing consumed): a
    stream learns it only when a write fails, and the first write after the close still
    succeeds, into the kernel's buffer; meanwhile its quota slot stayed held (two ping
    intervals for SSE, the whole wait for a ``?wait=`` start). A TLS socket, which cannot
    be peeked at, is not told (False). ``poll()``, not ``select()``: select refuses a
    descriptor of 1024 or more (ValueError), which read as gone and ended live streams of
    a busy process; and a peek only once there is something to read, as a socket with a
    timeout would wait that long for it."""
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket) \
            or sock.fileno() < 0:
        return False
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):  # nothing to read, no hang-up: the client is there
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):  # nothing to read: the client is there
        return False
    except OSError:  # reset by the peer
        return True
