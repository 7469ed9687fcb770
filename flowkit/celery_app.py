"""The Celery app flowkit runs on, configured for long work.

JSON only (no pickle is accepted anywhere), late acks, requeue on worker loss,
one prefetched message per process, and a broker visibility timeout that must
exceed the longest step a component can take: a worker refuses to start otherwise.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from celery import Celery, signals

from .config import Settings, get_settings
from .errors import ConfigError

log = logging.getLogger(__name__)
_app: Celery | None = None


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.broker,
        "result_backend": settings.backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.default_queue,
        # an I/O pool (gevent, threads) runs hundreds of tasks that all publish: kombu's
        # default of 10 connections per process runs out ("Too many connections")
        "broker_pool_limit": settings.connection_pool_size,
        "redis_max_connections": settings.connection_pool_size,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "max_connections": settings.connection_pool_size,
        },
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # one result backend (and Redis connection pool) per process: by default Celery
        # makes one per thread, and under gevent every task is a new greenlet, so each
        # step built a backend and opened a fresh Redis connection to store its result
        "result_backend_thread_safe": True,
        "result_expires": min(settings.retention_seconds, 24 * 3600),
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_send_sent_event": False,
        "beat_schedule": {
            # sweeps stuck behind a backlog of steps need not all run: later ones supersede them
            "flowkit-reaper": {
                "task": "flowkit.reaper",
                "schedule": settings.reaper_interval,
                "options": {"expires": max(settings.reaper_interval * 10, 30.0)},
            },
            "flowkit-retention": {"task": "flowkit.retention", "schedule": 3600.0},
        },
    }


def create_celery_app(
    main: str = "flowkit", settings: Settings | None = None, imports: Iterable[str] = ()
) -> Celery:
    """A Celery app for flowkit; ``imports`` are the modules defining your workflows."""
    global _app
    settings = settings or get_settings()
    app = Celery(main, set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.imports = list(imports)
    # flowkit's own tasks (step bodies, fan-out, finish, reaper) register on every app
    from . import executor, fanout, reaper, trace  # noqa: F401 - trace registers its step hooks

    _app = app
    return app


def get_app() -> Celery:
    """The app made by ``create_celery_app`` (one is made from settings if none was)."""
    return _app if _app is not None else create_celery_app()


def longest_step_seconds() -> float | None:
    """Worst-case duration of any configured step (all attempts, all waits); None if unbounded."""
    from .component import registered
    from .workflow import workflows

    comps = list(registered().values())
    for wf in workflows().values():
        comps.extend(wf.components())
    longest = 0.0
    for comp in comps:
        pol = comp.policy
        if pol.timeout is None:
            continue
        longest = max(longest, pol.timeout * pol.attempts + pol.backoff.maximum * (pol.attempts - 1))
    return longest or None


def check_visibility_timeout(settings: Settings) -> None:
    longest = longest_step_seconds()
    if longest is not None and longest >= settings.visibility_timeout:
        raise ConfigError(
            f"A step may run for {longest:g}s (timeout x attempts + backoff), longer than the "
            f"broker visibility timeout of {settings.visibility_timeout}s: Redis would hand the "
            "same step to a second worker. Set FLOWKIT_VISIBILITY_TIMEOUT above "
            f"{int(longest) + 1} or shorten the component's timeout."
        )


@signals.worker_init.connect
def _refuse_bad_config(sender=None, **_):
    try:
        check_visibility_timeout(get_settings())
    except ConfigError as exc:
        print(f"flowkit: worker refuses to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@signals.celeryd_after_setup.connect
def _name_worker(sender=None, **_):
    # before the pool forks, so prefork children's leases also carry the node name
    from . import heartbeat

    if sender:
        heartbeat.node_name = str(sender)


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    from . import heartbeat

    if sender is not None and getattr(sender, "hostname", None):
        heartbeat.node_name = sender.hostname
    heartbeat.heartbeat.ensure_running()


@signals.worker_process_init.connect
def _child_heartbeat(**_):
    from . import heartbeat

    heartbeat.heartbeat.ensure_running()
