"""gunicorn settings for a web process serving flowkit's API, shipped with the package.

``gunicorn -c python:flowkit.api.gunicorn_config yourapp:app`` serves your Flask app
(with ``FlowKit(app)`` mounted) on a server that holds WebSockets and SSE streams;
``flowkit dev`` uses it, and the reference deployment's ``api/gunicorn.conf.py`` imports
it. ``flask run`` (Werkzeug's development server) is not such a server.

gthread: every WebSocket or SSE client holds one thread while it follows a run
(plus simple-websocket's reader thread), and the relay hub multiplexes them all onto
one Redis reader per process; once a WebSocket client is caught up the hub writes its
frames itself, so its thread sleeps (until its client sends a message or leaves) and a
thread per client is cheap.
bench/stream_relay.py measured 1,000 subscribers in one process this way; see the
README's bench table.

Environment: ``FLOWKIT_WEB_BIND`` (else ``0.0.0.0:$PORT``, PORT 8000),
``FLOWKIT_WEB_WORKERS`` (1), ``FLOWKIT_WEB_THREADS`` (1200), ``FLOWKIT_WEB_ACCESS_LOG``
(any value: log requests to stderr), ``FLOWKIT_WEB_CONTROL_SOCKET`` (see below).
Command-line options override these.
"""

from __future__ import annotations

import gc
import os
import re
import sys
from typing import Any

from gunicorn.instrument.statsd import Statsd

__all__ = [
    "bind", "worker_class", "workers", "threads", "worker_connections", "timeout",
    "graceful_timeout", "keepalive", "accesslog", "control_socket_disable", "post_worker_init",
    "child_exit", "on_starting", "logger_class",
]



def _count(name: str, default: int) -> int:
    """A whole number >= 1 from the environment; else one line and exit 2 (a ValueError
    here was gunicorn's "Failed to read config file" and a traceback)."""
    raw = os.environ.get(name, "").strip() or str(default)
    if not (raw.isascii() and raw.isdigit() and int(raw) >= 1):
        print(f"flowkit web refuses to start: {name}={raw!r} is a whole number >= 1; unset it "
              f"or give a value like {default}.", file=sys.stderr)
        raise SystemExit(2)  # not an Exception: gunicorn lets it end the process as it is
    return int(raw)


bind = os.environ.get("FLOWKIT_WEB_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
worker_class = "gthread"
workers = _count("FLOWKIT_WEB_WORKERS", 1)
threads = _count("FLOWKIT_WEB_THREADS", 1200)
worker_connections = threads + 100
# Streams are long-lived: a worker that stops beating is killed, a silent client is not.
timeout = 60
graceful_timeout = 30
keepalive = 5
accesslog = "-" if os.environ.get("FLOWKIT_WEB_ACCESS_LOG") else None

#: A run token in a query string (browsers' EventSource and WebSocket send it there),
#: also as the Referer of what a page with one in its URL asks for: the value of any
#: parameter whose name holds ``token``, however spelled. Its name may come
#: percent-encoded (``tok%65n=`` is ``token=`` to Flask, and authenticates); one after a
#: ``;`` (the old W3C separator), or with more to its name (``token[]=``, ``token%00=``),
#: is refused, but the token in it is valid all the same.
_TOKEN_PARAM = re.compile(
    r"([?&;][^=&;\s]*(?:t|%74)(?:o|%6f)(?:k|%6b)(?:e|%65)(?:n|%6e)[^=&;\s]*=)[^&;\s]*",
    re.IGNORECASE)
#: A run token under any other name, or none: itsdangerous's base64url JSON (``{"`` is
#: ``eyJ``), timestamp and signature, joined by dots (maybe percent-encoded).
_TOKEN_VALUE = re.compile(r"eyJ[\w-]*(?:\.|%2[eE])[\w-]+(?:\.|%2[eE])[\w-]{20,}", re.ASCII)


def _redacted(text: str) -> str:
    return _TOKEN_VALUE.sub("***", _TOKEN_PARAM.sub(r"\1***", text))


class TokenRedactingLogger(Statsd):
    """Access log lines with run tokens blanked wherever the format puts a URL (request
    line, query string, Referer, any header or environ atom): a run token reads its run for
    a day, and logs are kept longer and read by more people than the run.

    gunicorn switches to its statsd logger by itself only while ``logger_class`` is its
    default: this one is that logger, sending nothing unless ``--statsd-host`` is set."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._statsd = cfg.statsd_host is not None

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for name, value in atoms.items():
            if isinstance(value, str):
                atoms[name] = _redacted(value)
        return atoms

    def _sock_send(self, msg: Any) -> None:
        if self._statsd:
            super()._sock_send(msg)


logger_class = TokenRedactingLogger
# gunicorn >= 27 listens for `gunicornc` on one socket per user ($HOME/.gunicorn) unless
# told otherwise: two web processes on one machine (flowkit dev beside another) would
# share it. FLOWKIT_WEB_CONTROL_SOCKET gives this one its own path, "off" none (older
# gunicorns ignore both settings).
_control = os.environ.get("FLOWKIT_WEB_CONTROL_SOCKET", "")
control_socket_disable = _control == "off"
if _control and _control != "off":
    control_socket = _control
    __all__ += ["control_socket"]


def on_starting(server: Any) -> None:
    """Before serving: warn loudly of a store Redis that would lose work (AOF off, an
    evicting maxmemory-policy), and refuse to start (exit 2, one line) when Redis refuses
    the credentials, instead of answering 503 to every request, or when the URLs Celery
    would be given cannot work (a Redis Cluster as the broker: every start was a 500)."""
    from ..config import get_settings
    from ..engine.doctor import broker_startup_findings, say, startup_findings
    from ..errors import ConfigError
    from ..urls import for_celery

    settings = get_settings()
    try:
        for_celery(settings.broker, settings.backend)
        say(startup_findings(settings.redis_url), "web", server.log)
        # a broker that refuses this process: it started, and answered every start 503
        say(broker_startup_findings(settings.broker, settings.redis_url), "web", server.log)
    except ConfigError as exc:
        server.log.error("flowkit web refuses to start: %s", exc)
        raise SystemExit(2) from None


def post_worker_init(worker: Any) -> None:
    """On SIGTERM (a deploy, a scale-down, a reload), and on SIGINT and SIGQUIT (a Ctrl-C,
    gunicorn's quick shutdown), end every stream first: WebSocket clients get close code
    1012 and SSE streams end, so they reconnect with their last event id to a process that
    stays, and this one exits without waiting out graceful_timeout (on SIGINT and SIGQUIT
    it waited it out for its streams' threads, then was killed: the followers' connections
    dropped, SSE mid-chunk)."""
    import signal

    from .extension import FlowKit

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        _end_streams_first(signum, worker, FlowKit.end_streams)
    # What the process built to serve (modules, classes, the app) lives as long as it does:
    # frozen, the collector's full passes walk only what requests allocate. Unfrozen, the
    # first full pass after startup stopped every request and stream for about 250 ms here
    # (the p99 of bench/start_latency.py's POST -> WebSocket), later ones for 60-70 ms.
    gc.freeze()


def _end_streams_first(signum: int, worker: Any, end_streams: Any) -> None:
    import signal

    stop = signal.getsignal(signum)

    def end_streams_then_stop(signum: int, frame: Any) -> None:
        try:
            end_streams(worker.wsgi)
        finally:  # gunicorn's own handler, whatever became of the streams
            stop(signum, frame)

    signal.signal(signum, end_streams_then_stop)


def child_exit(server: Any, worker: Any) -> None:
    """A worker process ended. With several workers, ``PROMETHEUS_MULTIPROC_DIR`` (an empty
    directory) makes ``GET /metrics`` the sum of every worker's samples, whichever answers;
    the ended worker's live gauges (its stream subscribers) must stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from ..metrics import child_exited

        child_exited(worker.pid)
