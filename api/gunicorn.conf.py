"""gunicorn settings of the web process (``gunicorn -c api/gunicorn.conf.py api.app:app``).

gthread: every WebSocket or SSE client holds one thread while it follows a run
(plus simple-websocket's reader thread), and the relay hub multiplexes them all onto
one Redis reader per process; once a WebSocket client is caught up the hub writes its
frames itself, so its thread sleeps and a thread per client is cheap.
bench/stream_relay.py measured 1,000 subscribers in one process this way; see the
README's bench table.
"""

import os

bind = os.environ.get("FLOWKIT_WEB_BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
worker_class = "gthread"
workers = int(os.environ.get("FLOWKIT_WEB_WORKERS", "1"))
threads = int(os.environ.get("FLOWKIT_WEB_THREADS", "1200"))
worker_connections = threads + 100
# Streams are long-lived: a worker that stops beating is killed, a silent client is not.
timeout = 60
graceful_timeout = 30
keepalive = 5
accesslog = "-" if os.environ.get("FLOWKIT_WEB_ACCESS_LOG") else None


def post_worker_init(worker):
    """On SIGTERM (a deploy, a scale-down) end every stream first: WebSocket clients get
    close code 1012 and SSE streams end, so they reconnect with their last event id to a
    process that stays, and this one exits without waiting out graceful_timeout."""
    import signal

    from flowkit import FlowKit

    stop = signal.getsignal(signal.SIGTERM)

    def end_streams_then_stop(signum, frame):
        FlowKit.end_streams(worker.wsgi)
        stop(signum, frame)

    signal.signal(signal.SIGTERM, end_streams_then_stop)
