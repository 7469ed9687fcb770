"""A run's first messages, pushed by the script that stores the run.

Starting a run was two round trips and most of a millisecond and a half of Celery's own
work: the create script, then a chain's ``apply_async`` (its preparation, a Redis client
that kombu's transport makes per publish, and a subscription to a result nobody reads).
When the broker is a database of the store's own Redis server (the default: one URL), the
canvas is still prepared and its message built by Celery and kombu, exactly as they would
send it, but captured instead of sent: kombu's publish batches (kombu >= 5.7) hand a
batch the Redis commands of each message, and :class:`_Capture` is such a batch that
keeps them. The create script then pushes them once the run is stored, in the same round
trip (``Store.create_run``): a message never exists without its run, nor twice for one
idempotency key.

Anything else (another broker server, Sentinel, Cluster, RabbitMQ, a canvas whose first
message is a group, a kombu without publish batches or with a key prefix) returns None
from :func:`first_messages`, and the caller publishes the usual way.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from celery import Signature
from celery.canvas import _chain, _chord, group

from ..store import BrokerMessages, Store
from ..urls import shared_server_db
from .broker import get_app

_local = threading.local()


def capturing() -> bool:
    """Whether this thread is capturing a start's messages: Celery's publish signals fire
    for them before they exist (they go out with the run's create script)."""
    return getattr(_local, "capture", None) is not None


class _Capture:
    """A publish batch (the interface kombu's ``Producer`` drives) that keeps each
    message's Redis commands instead of running them."""

    aborted = False

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def publish(self, channel: Any, message: dict, **kwargs: Any) -> Any:
        return channel.basic_publish(message, _publish_batch=self, **kwargs)

    def add(self, name: str, *args: Any) -> None:
        self.commands.append((name, *args))


@lru_cache(maxsize=8)
def _broker_db(store_url: str, broker_url: str) -> int | None:
    return shared_server_db(store_url, broker_url)


def first_messages(store: Store, run_id: str, canvas: Signature,
                   args: tuple) -> BrokerMessages | None:
    """What publishing ``canvas`` applied to ``args`` would push, for ``store.create_run``;
    None when it must be published the usual way (see the module's doc)."""
    app = get_app()
    db = _broker_db(store.settings.redis_url, app.conf.broker_url or "")
    if db is None:
        return None
    options: dict[str, Any] = {"declare": []}  # a Redis list needs no declaring
    if isinstance(canvas, _chain) and all(type(t) is Signature for t in canvas.tasks):
        # a chain of plain tasks as the message protocol has it: the first task's message
        # carries the others, last first (what chain.apply_async sends, less its freezing
        # of results no one reads)
        first = canvas.tasks[0].clone(args)
        if len(canvas.tasks) > 1:
            options["chain"] = [dict(t) for t in reversed(canvas.tasks[1:])]
    elif isinstance(canvas, _chain):  # as chain.apply_async prepares it (groups into chords)
        tasks, _ = canvas.prepare_steps(args, {}, canvas.tasks, app=app)
        first = tasks.pop()
        if tasks:
            options["chain"] = tasks
    else:
        first = canvas.clone(args)
    if isinstance(first, (group, _chord, _chain)):
        return None
    if first.options.get("ignore_result") is None:
        options["ignore_result"] = True  # no subscription to a result nobody reads
    capture = _Capture()
    with app.producer_or_acquire() as producer:
        channel = producer.channel
        if not hasattr(channel, "create_publish_batch") or not hasattr(producer, "_batch_local"):
            return None
        # kombu's client prefixes the keys it sends (FLOWKIT_KEY_PREFIX: broker.py); the
        # batch holds them bare, and the run's script pushes them itself
        prefix = getattr(channel, "global_keyprefix", "") or ""
        producer._batch_local.current = _local.capture = capture
        try:
            first.apply_async(producer=producer, **options)
        finally:
            del producer._batch_local.current
            _local.capture = None
    if not capture.commands or any(c[0] != "lpush" or len(c) != 3 for c in capture.commands):
        return None  # e.g. queues with an expiry (a PEXPIRE per message): sent as usual
    return BrokerMessages(run_id, db, [(prefix + key, payload)
                                       for _, key, payload in capture.commands])
