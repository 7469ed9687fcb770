"""The Celery app that carries flowkit's messages: its configuration, and this process's app.

JSON only (no pickle is accepted anywhere), and plain JSON at that (:data:`SERIALIZER`),
late acks, requeue on worker loss, one
prefetched message per process. On Redis, a broker visibility timeout that must exceed the
longest step a component can take (a worker refuses to start otherwise, see
:mod:`flowkit.worker.checks`); on RabbitMQ, a worker that survives the broker's
``consumer_timeout`` (see ``broker_channel_error_retry`` below).

A worker's app comes from :func:`flowkit.worker.create_celery_app`, which makes it this
process's app. A process that only sends (the web app, the CLI, a script starting runs)
gets one made from the settings on first use: messages go by task name, so a producer
needs none of the tasks registered.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import serialization
from kombu.exceptions import ChannelError

from .. import defaults
from ..config import Settings, get_settings, is_amqp
from ..defaults import BROKER_READ_TIMEOUT
from ..errors import ConfigError
from ..locks import ForkSafeLock
from ..urls import SentinelURL, celery_redis_url, for_celery, redacted
from .transport import transport_for

log = logging.getLogger(__name__)

_app: Celery | None = None
#: The settings the producer app was made from (None: the app is create_celery_app's).
_made_from: Settings | None = None
_lock = ForkSafeLock()

#: Message priorities, as ranks of the Redis transport: 0 is served first. A run that
#: continues (restart, retry, answered wait) sends its frontier at 0, so its recovery does
#: not wait behind the backlog of new runs; fresh work is served by its run's priority
#: (0-9, 9 first): priority p goes out at rank 9 - p (the default, 0, at 9; 9 with
#: continued work). RabbitMQ serves the highest number first: there a message carries
#: 9 - rank (:func:`message_priority`), on queues declared with ``x-max-priority`` 9.
CONTINUED_PRIORITY = 0
FRESH_PRIORITY = 9
PRIORITY_STEPS = list(range(10))
MAX_PRIORITY = 9


#: The serializer of every task message and result: JSON read back as plain JSON. kombu's
#: own ``json`` turns any object shaped ``{"__type__": T, "__value__": v}`` into a Python
#: object on the way in (bytes, datetime, Decimal, UUID): a run's input or fan-out item
#: holding one reached its step as that type, past the workflow's schema, or made the whole
#: message undecodable and left its run queued. Values go out as plain JSON too: what JSON
#: cannot carry is refused where it is sent, not tagged.
SERIALIZER = "flowkit-json"
#: Its content type on the broker (kombu keys decoders by content type).
CONTENT_TYPE = "application/x-flowkit-json"
#: What a worker reads: flowkit's, and kombu's ``json`` of messages and results sent by a
#: release before it (a rolling deploy; read as kombu reads them).
ACCEPTED = [SERIALIZER, "json"]


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def register_serializer() -> None:
    """Make :data:`SERIALIZER` known to kombu (its registry is per process; again is a no-op)."""
    serialization.register(SERIALIZER, _encode, json.loads, content_type=CONTENT_TYPE,
                           content_encoding="utf-8")


def message_priority(rank: int, broker_url: str | None = None) -> int:
    """The priority a message of ``rank`` (0 first) carries on the broker (this process's)."""
    url = broker_url if broker_url is not None else get_app().conf.broker_url
    return MAX_PRIORITY - rank if is_amqp(url or "") else rank


def continued_priority() -> int:
    """The message priority of continued work: before every fresh message."""
    return message_priority(CONTINUED_PRIORITY)


def fresh_priority(run_priority: int) -> int:
    """The message priority of fresh work of a run of ``run_priority`` (0-9, 9 first)."""
    return message_priority(FRESH_PRIORITY - run_priority)


def _celery_urls(settings: Settings) -> tuple[str, str, dict, dict]:
    """Broker and result backend URLs and their extra transport options: a Sentinel URL
    (``redis+sentinel://``, flowkit.urls) written as Celery's ``sentinel://`` transport."""
    urls, options = [], []
    for_celery(settings.broker, settings.backend)
    for url in (settings.broker, settings.backend):
        sentinel = SentinelURL.parse(url)
        urls.append(celery_redis_url(url) if sentinel is None else sentinel.celery_url())
        options.append({} if sentinel is None else sentinel.transport_options())
    return urls[0], urls[1], options[0], options[1]


def reaper_queue(default_queue: str) -> str:
    """The queue of beat's housekeeping (the reaper, every few seconds, and retention): its
    own, which every worker of the deployment consumes besides its ``--queues``
    (:mod:`flowkit.worker.signals`). On the steps' queue a sweep waited behind their whole
    backlog, and it filled the task lists of every monitor. Named after the deployment's
    default queue, so deployments side by side (blue/green) each sweep with their own
    workers, as before."""
    return f"{default_queue}.reaper"


def _prefixed(settings: Settings, url: str) -> dict[str, str]:
    """kombu's and Celery's ``global_keyprefix`` on a Redis broker or result backend when
    the deployment's keys have a prefix of their own (FLOWKIT_KEY_PREFIX): deployments
    side by side on one Redis database took each other's messages from the shared
    ``flowkit`` list, and the other's worker, finding no such run, dropped them (runs sat
    queued, then failed as stranded). The default prefix keeps Celery's keys as they were:
    a deployment that upgrades finds its queued messages where it left them."""
    if settings.key_prefix == defaults.KEY_PREFIX or is_amqp(url):
        return {}
    return {"global_keyprefix": f"{settings.key_prefix}:"}


def celery_config(settings: Settings) -> dict:
    broker, backend, broker_options, backend_options = _celery_urls(settings)
    broker_options = {**broker_options, **_prefixed(settings, broker)}
    backend_options = {**backend_options, **_prefixed(settings, backend)}
    register_serializer()
    return {
        "broker_url": broker,
        # kombu's Redis transport, guarded so that a worker outlives a Redis outage
        "broker_transport": transport_for(broker),
        "result_backend": backend,
        "task_serializer": SERIALIZER,
        "result_serializer": SERIALIZER,
        "event_serializer": "json",  # monitors' (flower): worker events carry no input
        "accept_content": ACCEPTED,
        "result_accept_content": ACCEPTED,
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
            # one Redis list per priority step, consumed in this order (0 first)
            "priority_steps": PRIORITY_STEPS,
            # a send's (re)connect gives up within the process's Redis budget when that is
            # shorter than Celery's 4 s: the CLI's 2 s (a database index the server lacks
            # is retried as if it were an outage: 7 s before the CLI could say so)
            "connect_retries_timeout": min(4.0, settings.redis_retry_seconds),
            **broker_options,
        },
        "task_default_priority": message_priority(FRESH_PRIORITY, broker),
        # RabbitMQ orders a queue by priority only when it is declared with a maximum
        "task_queue_max_priority": MAX_PRIORITY if is_amqp(broker) else None,
        "result_backend_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # reconnecting (a canvas being sent subscribes to it) gives up within the
            # process's own Redis budget, not Celery's 20 tries a second apart
            "retry_policy": {"max_retries": max(1, round(settings.redis_retry_seconds)),
                             "interval_start": 0, "interval_step": 1, "interval_max": 1},
            **backend_options},
        # one result backend (and Redis connection pool) per process: by default Celery
        # makes one per thread, and under gevent every task is a new greenlet, so each
        # step built a backend and opened a fresh Redis connection to store its result
        "result_backend_thread_safe": True,
        "result_expires": min(settings.retention_seconds, 24 * 3600),
        "broker_connection_retry_on_startup": True,
        # a worker or beat rides out a broker outage of any length (Celery gives up after
        # 100 attempts by default, about 45 minutes)
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # RabbitMQ closes a channel whose delivery stayed unacknowledged past its
        # consumer_timeout (30 min by default): a long step, or a message prefetched behind
        # one. Celery's default takes that channel error as fatal and the whole worker exits;
        # retried, it is a reconnect like any other: running steps go on, the broker
        # redelivers their messages and begin_step drops them (the step's lease is held)
        "broker_channel_error_retry": True,
        # after a reconnect Celery lowers the prefetch and raises it again, one basic.qos per
        # finished task, sent from its event loop; on RabbitMQ one of those waited for a
        # qos-ok forever and the worker, alive, stopped consuming and never saw its channel
        # close (tests/chaos/test_rabbitmq.py, the step past consumer_timeout, caught it)
        "worker_enable_prefetch_count_reduction": False,
        "task_send_sent_event": False,
        "beat_schedule": {
            # sweeps stuck behind a backlog of steps need not all run: later ones supersede them
            "flowkit-reaper": {
                "task": "flowkit.reaper",
                "schedule": settings.reaper_interval,
                "options": {"expires": max(settings.reaper_interval * 10, 30.0),
                            "priority": message_priority(CONTINUED_PRIORITY, broker),
                            "queue": reaper_queue(settings.default_queue)},
            },
            "flowkit-retention": {"task": "flowkit.retention",
                                  "schedule": retention_interval(settings),
                                  "options": {"queue": reaper_queue(settings.default_queue)}},
        },
    }


def retention_interval(settings: Settings) -> float:
    """Seconds between beat's retention tasks: hourly, or every half retention when that
    is shorter (expired runs' entries stay in the listing indexes until it runs: listings
    skip them, at a read each; the claims and event waits it keeps must not lapse between)."""
    return min(3600.0, max(1.0, settings.retention_seconds / 2))


def use_app(app: Celery | None) -> Celery | None:
    """Make ``app`` the one this process sends flowkit's messages with (None: a producer
    app made from the settings, again, on next use)."""
    global _app, _made_from
    _app, _made_from = app, None
    return app


def get_app() -> Celery:
    """This process's app (``create_celery_app``'s), or a producer app made from settings
    (made again when ``flowkit.configure`` changes them)."""
    global _app, _made_from
    settings = get_settings()
    if _made_from is None and _app is not None and settings is not _checked[0]:
        _say_if_moved(_app, settings)
    if _app is None or (_made_from is not None and _made_from is not settings):
        with _lock:
            if _app is None or (_made_from is not None and _made_from is not settings):
                app = Celery("flowkit", set_as_current=False)
                app.conf.update(celery_config(settings))
                _app, _made_from = app, settings
    assert _app is not None
    return _app


#: The settings :func:`get_app` last compared with ``create_celery_app``'s app.
_checked: list[Settings | None] = [None]


def _say_if_moved(app: Celery, settings: Settings) -> None:
    """Warn, once per change, when the settings name another broker than the one the app
    was made with: ``flowkit.configure(redis_url=...)`` after the app was made moved the
    store alone, and the app's messages went on to the first Redis (a test's steps ran on
    the developer's ``flowkit dev`` worker)."""
    _checked[0] = settings
    try:
        broker = _celery_urls(settings)[0]
    except ConfigError:  # settings no app could be made from: said where they are used
        return
    if broker != app.conf.broker_url:
        log.warning("flowkit: the settings name the broker %s, but the Celery app %r was made "
                    "with %s and still sends there: make the app after flowkit.configure(), "
                    "or set FLOWKIT_REDIS_URL / FLOWKIT_BROKER_URL before importing it.",
                    redacted(broker), app.main, redacted(app.conf.broker_url or ""))


def refused_queues(app: Celery, queues: Iterable[Any]) -> dict[str, str]:
    """The queues (kombu ``Queue`` s) RabbitMQ refuses to declare as this app declares
    them, with the broker's reason: one that exists with other arguments (declared by an
    older flowkit without ``x-max-priority``, or by another app) closes the channel of
    every consumer, so a worker checks before it consumes."""
    refused: dict[str, str] = {}
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1)
        for queue in queues:
            channel = conn.channel()
            try:
                queue.bind(channel).declare()
            except conn.channel_errors as exc:
                refused[queue.name] = str(exc)
            finally:
                try:
                    channel.close()
                except conn.channel_errors + conn.connection_errors:
                    pass  # the broker closed it already
    return refused


#: How to fix queues RabbitMQ refuses to declare as flowkit does (:func:`queues_refused`).
QUEUES_REFUSED_FIX = ("They exist with other arguments (made by an older flowkit or another "
                      "app): stop their producers, let the workers drain them, delete them "
                      "(rabbitmqctl delete_queue NAME) and start the workers again, which "
                      "declare them anew.")


def queues_refused(refused: dict[str, str]) -> str:
    """What :func:`refused_queues` found, said: the queues and the broker's first reason."""
    return (f"RabbitMQ refuses to declare queue(s) {', '.join(sorted(refused))} as flowkit "
            f"does (with x-max-priority {MAX_PRIORITY}, for message priorities): "
            f"{next(iter(refused.values()))}.")


def check_queues(app: Celery, queues: list[Any]) -> None:
    """RabbitMQ declares every queue the worker consumes as flowkit declares it (with
    ``x-max-priority``); ConfigError naming the queues it refuses and how to fix them."""
    refused = refused_queues(app, queues)
    if refused:
        raise ConfigError(f"{queues_refused(refused)} {QUEUES_REFUSED_FIX}")


def queue_depths(queues: Iterable[str], url: str | None = None,
                 timeout: float = BROKER_READ_TIMEOUT) -> dict[str, int | None]:
    """Messages waiting in each broker queue (a Redis queue's priority lists summed), by a
    passive declare, which the Redis and AMQP transports both answer; a queue the broker
    does not know (on Redis: an empty one) has 0, one whose declare the broker refused
    (an error reply: a Redis ``BUSY``, ``MASTERDOWN`` or ``NOPERM``, an AMQP access refusal)
    None: unknown. Raises the broker's connection error when it does not answer, also
    within ``timeout`` seconds when it takes the connection but says nothing (a frozen
    server held a scrape, or a reaper sweep, for good). ``url``: another broker's."""
    depths: dict[str, int | None] = {}
    bounded = {"socket_timeout": timeout, "socket_connect_timeout": timeout,  # Redis
               "read_timeout": timeout, "write_timeout": timeout}  # AMQP
    with get_app().connection_for_read(url, connect_timeout=timeout,
                                       transport_options=bounded) as conn:
        conn.ensure_connection(max_retries=1)
        refused = (ChannelError, *conn.channel_errors)
        channel = conn.channel()
        try:
            for queue in queues:
                try:
                    depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
                except refused as exc:
                    # only "no such queue" is an empty one: read as 0, a refusal made every
                    # run waiting in that queue look lost
                    depths[queue] = 0 if str(getattr(exc, "reply_code", "")) == "404" else None
                    if not getattr(channel, "is_open", True):  # AMQP closes it on an error
                        channel = conn.channel()
        finally:
            channel.close()
    return depths
