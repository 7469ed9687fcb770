"""flowkit.engine.transport on a real Redis: what Celery's worker does to its broker
connection when Redis dies under it (collect, then close), with a step's message
unacknowledged and a BRPOP in flight, as the worker's event loop leaves them."""

from __future__ import annotations

import time

import pytest
from kombu import Connection, Consumer, Exchange, Queue
from kombu.common import ignore_errors

from flowkit.config import Settings
from flowkit.engine.broker import celery_config
from flowkit.engine.transport import transport_for
from flowkit.testing.redis import LocalRedis
from flowkit.urls import SentinelURL
from tests.chaos.test_sentinel import Sentinels
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

FLOWKIT = "flowkit.engine.transport:Transport"
SENTINEL = "flowkit.engine.transport:SentinelTransport"


@pytest.fixture
def server():
    with LocalRedis(appendonly=True) as redis_server:
        yield redis_server


@pytest.fixture
def sentinels(server):
    """Sentinels watching ``server``, as a Sentinel broker's (Celery's ``sentinel://``)."""
    watching = Sentinels(server).start()
    try:
        wait_until(lambda: all(watching.primary_port(i) == server.port for i in range(3)), 20,
                   "the sentinels to name the primary")
        yield watching
    finally:
        watching.stop()


def sentinel_connection(sentinels: Sentinels, transport: str | None,
                        **options: object) -> Connection:
    url = SentinelURL.parse(sentinels.url)
    return Connection(url.celery_url(), transport=transport,
                      transport_options={**url.transport_options(), **options})


def lose_redis_under(server: LocalRedis, connection: Connection) -> Connection:
    """A worker's connection in the state the outage finds it in, Redis then stopped and
    the connection collected, as Celery's consumer does on a connection error."""
    queue = Queue("steps")
    with connection.Producer() as producer:
        producer.publish({"step": 1}, routing_key="steps", declare=[queue], serializer="json")
    delivered = []
    Consumer(connection, [queue], callbacks=[lambda body, message: delivered.append(body)],
             ).consume()
    connection.drain_events(timeout=5)
    assert delivered == [{"step": 1}]  # and left unacknowledged: the step "runs"
    pidbox = connection.channel()  # its fanout queue is deleted when it closes
    Consumer(pidbox, [Queue("pidbox", Exchange("pidbox", type="fanout"), auto_delete=True)]
             ).consume()
    assert pidbox.client is not None
    # the event loop's BRPOP for the next message, in flight when Redis goes
    connection.default_channel._brpop_start()
    server.stop()
    connection.collect(socket_timeout=4)
    return connection


def test_kombus_own_transport_still_fails_the_close_with_an_attribute_error(server):
    """Why the guard exists (kombu 5.7): if this fails, kombu fixed it upstream and
    flowkit.engine.transport can go."""
    connection = lose_redis_under(server, Connection(server.url))
    with pytest.raises(AttributeError, match="hostname"):
        ignore_errors(connection, connection.close)


def test_a_connection_collected_in_an_outage_closes_and_its_unacked_message_comes_back(server):
    """Celery closes the collected connection with ``ignore_errors``: it must raise nothing
    else (an AttributeError made the worker exit), and the step's message, never
    acknowledged, is delivered again once Redis is back and its visibility timeout passed."""
    connection = lose_redis_under(server, Connection(server.url, transport=FLOWKIT))
    ignore_errors(connection, connection.close)

    server.start()
    assert redelivered(Connection(server.url, transport=FLOWKIT,
                                  transport_options={"visibility_timeout": 1}))


def test_kombus_sentinel_transport_fails_the_same_way(server, sentinels):
    """A Sentinel broker (``sentinel://``): kombu's transport, then flowkit's guarded one."""
    connection = lose_redis_under(server, sentinel_connection(sentinels, None))
    with pytest.raises(AttributeError, match="hostname"):
        ignore_errors(connection, connection.close)


def test_a_sentinel_brokers_collected_connection_closes_and_its_message_comes_back(
        server, sentinels):
    connection = lose_redis_under(server, sentinel_connection(sentinels, SENTINEL))
    ignore_errors(connection, connection.close)

    server.start()
    assert redelivered(sentinel_connection(sentinels, SENTINEL, visibility_timeout=1))


def redelivered(again: Connection) -> bool:
    """Whether the step's message, restored past its visibility timeout, is delivered."""
    time.sleep(1.1)  # the visibility timeout (1 s) is what is being waited out
    got = []
    with again:
        Consumer(again, [Queue("steps")],
                 callbacks=[lambda body, message: (got.append(body), message.ack())],
                 ).consume()
        # what a worker's event loop does every few seconds
        again.default_channel.qos.restore_visible(num=10)
        again.drain_events(timeout=5)
    return got == [{"step": 1}]


@pytest.mark.parametrize(("url", "transport"), [
    ("redis://127.0.0.1:6379/0", FLOWKIT),
    ("rediss://example.com:6380/0", FLOWKIT),
    ("redis+sentinel://127.0.0.1:26379/mymaster/0", SENTINEL),
    ("amqp://guest:guest@127.0.0.1:5672//", None),
])
def test_celery_is_configured_with_the_guarded_transport_of_a_redis_broker(url, transport):
    assert transport_for(celery_config(Settings(broker_url=url))["broker_url"]) == transport
    assert celery_config(Settings(broker_url=url))["broker_transport"] == transport
