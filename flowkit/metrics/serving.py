"""Exposing the metrics: the text of ``GET /metrics``, and a worker's own HTTP server.

A worker with FLOWKIT_METRICS_PORT serves from its main process (Celery's signals call
:func:`prepare_worker`, :func:`serve_worker`, :func:`child_exited`, :func:`stop_worker`).
With a prefork pool the steps run in children, so the main process, before it forks,
points prometheus_client at a directory of its own (PROMETHEUS_MULTIPROC_DIR, unless
the operator set one) and switches to file-backed values; it then serves the sum of every
child's files, and a child that exits leaves its counters behind (what it counted stays
counted). Thread and gevent pools are one process and need none of this.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app, multiprocess, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..config import get_settings
from . import families as _families
from .deployment import DeploymentCollector
from .listeners import install

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _ThisProcess(Collector):
    """This process's metrics in single-process mode: the default registry's (the host
    app's own, the process and GC collectors) and flowkit's."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from _families.families().collect()


def registry(deployment: Collector | None = None) -> CollectorRegistry:
    """What one scrape exposes: this process's metrics (every process's, in multiprocess
    mode), and the deployment's when given."""
    reg = CollectorRegistry(auto_describe=False)
    if _families.multiprocess():
        multiprocess.MultiProcessCollector(reg)
    else:
        reg.register(_ThisProcess())
    if deployment is not None:
        reg.register(deployment)
    return reg


def render(accept: str | None, deployment: Collector | None = None) -> tuple[bytes, str]:
    """The exposition (Prometheus text, or OpenMetrics when ``accept`` asks) and its type."""
    encoder, content_type = choose_encoder(comparable_accept(accept))
    return encoder(registry(deployment)), content_type


def comparable_accept(accept: str | None) -> str:
    """``accept``, or none (the text format) when prometheus_client cannot compare it:
    ``...; version=abc`` raised in its version check, a 500."""
    try:
        choose_encoder(accept or "")
    except (TypeError, ValueError):
        return ""
    return accept or ""


# -- a worker's server ------------------------------------------------------------------

_server: Any = None
#: The directory this worker made for its children's files, and the process that made it.
_owned_dir: str | None = None
_owner_pid = 0
_lock = threading.Lock()


def prepare_worker(prefork: bool) -> None:
    """In the worker's main process, before its pool starts: with FLOWKIT_METRICS_PORT set,
    count this worker's steps and LLM calls, in files when the pool forks."""
    global _owned_dir, _owner_pid
    if not get_settings().metrics_port:
        return
    if prefork and not os.environ.get(MULTIPROC_ENV):
        remove_orphaned_dirs()
        _owner_pid = os.getpid()
        _owned_dir = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{_owner_pid}-")
        os.environ[MULTIPROC_ENV] = _owned_dir  # the children inherit it
    if os.environ.get(MULTIPROC_ENV) and not _families.multiprocess():
        # prometheus_client picks its value class when first imported, maybe before this
        # ran (by the app's own imports); no flowkit metric exists yet in this worker, so
        # picking again now makes every one of them file-backed
        values.ValueClass = values.get_value_class()
        _families.reset()
    install()


def serve_worker() -> None:
    """Start the worker's metrics server (worker_ready; once per process)."""
    global _server
    settings = get_settings()
    if not settings.metrics_port:
        return
    with _lock:
        if _server is not None:
            return
        deployment = DeploymentCollector() if settings.metrics_deployment else None
        try:
            _server = _start_server(settings.metrics_addr, settings.metrics_port,
                                    _plain_accept(make_wsgi_app(registry(deployment))))
        except OSError as exc:  # the port is taken: the worker still works, unobserved
            log.error("flowkit: no metrics server on %s:%s: %s", settings.metrics_addr,
                      settings.metrics_port, exc)
            return
    log.info("flowkit: metrics at http://%s:%s/metrics", settings.metrics_addr,
             settings.metrics_port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds the worker's exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a line per scrape: no
        pass


def _plain_accept(app: Callable) -> Callable:
    """``app`` with an Accept header prometheus_client cannot compare (``...; version=abc``)
    dropped: it answered 500 (prometheus_client's own server, which this replaces, has no
    hook for it); without one it answers the text format, as ``GET /metrics`` does."""
    def checked(environ: dict, start_response: Callable) -> Any:
        if not comparable_accept(environ.get("HTTP_ACCEPT")):
            environ.pop("HTTP_ACCEPT", None)
        return app(environ, start_response)
    return checked


def _start_server(addr: str, port: int, app: Callable) -> WSGIServer:
    """Serve ``app`` from a daemon thread (as prometheus_client's start_http_server)."""
    server_class = _Server
    if ":" in addr:  # an IPv6 address
        server_class = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
    server = make_server(addr, port, app, server_class, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="flowkit-metrics", daemon=True).start()
    return server


#: The name of the directory a prefork worker makes for its children's files, before the
#: pid of the worker that made it.
DIR_PREFIX = "flowkit-metrics-"


def remove_orphaned_dirs(parent: str | None = None) -> list[str]:
    """Remove the directories of workers that are gone without removing theirs (SIGKILL,
    OOM): each worker's restart made a new one, and a crash loop filled /tmp. A directory
    is named by the pid of the worker that made it; one whose process is alive is kept."""
    parent = parent or tempfile.gettempdir()
    removed = []
    for name in os.listdir(parent):
        pid = name.removeprefix(DIR_PREFIX).partition("-")[0]
        if not name.startswith(DIR_PREFIX) or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def child_exited(pid: int) -> None:
    """A pool child ends: its live gauges stop counting (its counters stay)."""
    if _families.multiprocess() and os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def stop_worker() -> None:
    """The worker stops: close the server, remove the directory this worker made."""
    global _server, _owned_dir
    with _lock:
        server, _server = _server, None
        owned, _owned_dir = _owned_dir, None
    if server is not None:
        server.shutdown()
        server.server_close()
    if owned and os.getpid() == _owner_pid:
        shutil.rmtree(owned, ignore_errors=True)
