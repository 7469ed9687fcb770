"""kombu's Redis transports, with one guard: a worker must outlive a Redis outage.

When a worker loses its broker, Celery collects the connection (``Connection.collect``,
which drops the transport's link to its ``Connection``) and then closes it. Closing a
channel gives back the messages it holds unacknowledged, and to do that kombu 5.7 builds a
connection pool from that link, now ``None``: ``AttributeError``, which Celery takes as
fatal ("Unrecoverable error") and the worker exits. It happens when Redis dies while
a step runs (its message unacknowledged, late acks) and a BRPOP is in flight, and a channel
the collection could not close first (the pidbox's, which deletes its queues on close) is
in the way: the first close stops at the BRPOP and the collection never retries it.

The guard raises what the situation is, a ``ConnectionError`` (Redis cannot be reached,
and the parameters to reach it are gone), which Celery's cleanup ignores like every other
error of the outage (kombu counts ``OSError`` among a Redis connection's errors). The
unacknowledged messages stay where kombu put them at delivery, in Redis's ``unacked``
hash, and the visibility timeout brings them back, as it does for each restore an outage
prevents; begin_step drops a redelivery of a step already done.

RabbitMQ's transport, and a ``redis+socket://`` broker (whose transport kombu takes from
the URL), use kombu's own transports.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis

#: The broker URL schemes these transports serve (``sentinel://``: Celery's Sentinel URL).
SCHEMES = {"redis": "Transport", "rediss": "Transport", "sentinel": "SentinelTransport"}

COLLECTED = ("the broker connection was collected after it was lost: its unacknowledged "
             "messages stay in Redis and come back after the visibility timeout")


class _Guarded:
    """Put before a kombu Redis channel class: a pool is built only while the channel's
    connection is there to say where Redis is."""

    def _get_pool(self, asynchronous: bool = False):
        if self.connection is None or self.connection.client is None:
            raise ConnectionError(COLLECTED)
        return super()._get_pool(asynchronous)


class Channel(_Guarded, kombu_redis.Channel):
    pass


class SentinelChannel(_Guarded, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(broker_url: str) -> str | None:
    """The ``broker_transport`` Celery is configured with for ``broker_url`` (None: kombu's
    own, chosen by the URL's scheme)."""
    name = SCHEMES.get(broker_url.partition("://")[0].lower())
    return None if name is None else f"{__name__}:{name}"
