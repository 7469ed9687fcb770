"""Redis clients for flowkit's store, configured to ride out a Redis restart.

Commands go through a blocking pool: a burst of clients (a reconnect storm after a
deploy) waits for a connection instead of failing with MaxConnectionsError, and a
command whose connection broke is resent for ``FLOWKIT_REDIS_RETRY_SECONDS`` (the
scripts that count recognise their own resend, see ``lua/``); the API's store has a
budget of its own, ``FLOWKIT_API_REDIS_RETRY_SECONDS``. Blocking reads (the
relay's ``XREAD``) get a connection of their own so they never hold one of the pool's.

With a ``redis+sentinel://`` URL (:mod:`flowkit.urls`) every client asks the sentinels
for the current primary and follows a failover: a connection that finds its server gone
or demoted to a replica is dropped, and the resend reaches the new primary (redis-py's
``SentinelConnectionPool``, which does not block when full: its size is the same
``FLOWKIT_CONNECTION_POOL_SIZE``).

With a ``redis+cluster://`` URL every client is redis-py's ``RedisCluster``: it learns the
slot map from the nodes named, sends each command to the primary of its key's slot and
follows MOVED/ASK; ``FLOWKIT_CONNECTION_POOL_SIZE`` is then per node. Every multi-key
command and script of the store touches one slot (:mod:`flowkit.store.keys`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisClusterUnreachableError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

from ..config import Settings
from ..errors import ConfigError, StoreUnavailable
from ..urls import NO_PRIMARY, NOT_SENTINELS, ClusterURL, SentinelURL, redacted
from . import failover

#: redis-py's errors that mean "Redis is unreachable" (not a bad command).
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
#: A Redis Cluster's errors while it moves a slot or fails over, once the cluster client's
#: own resends are spent: ``ClusterError("TTL exhausted")`` after TRYAGAIN (a multi-key
#: script on a slot half migrated) or redirections, a slot no node serves yet.
CLUSTER_MOVING = (redis.exceptions.ClusterError, redis.exceptions.TryAgainError,
                  redis.exceptions.SlotNotCoveredError)

P = ParamSpec("P")
R = TypeVar("R")


#: Errors no resend can cure: Redis refused the credentials (a wrong or missing password,
#: an ACL user without the rights). redis-py files AuthenticationError under
#: ConnectionError, so without this a wrong password looked like an outage and was
#: retried for the whole budget.
REFUSED = (redis.AuthenticationError, redis.exceptions.AuthorizationError)


#: What a plain URL at one node of a Redis Cluster is told (the node answers MOVED).
CLUSTER_NODE = ("FLOWKIT_REDIS_URL reaches one node of a Redis Cluster (it answered MOVED): "
                "write it as redis+cluster://host:port (every node is found from one).")

#: What a URL at a replica is told (a read-only copy: every write fails, ReadOnlyError).
REPLICA = ("FLOWKIT_REDIS_URL reaches a replica of the Redis at {primary} (read-only; a failover "
           "may have demoted it): point it at the primary, or at your sentinels "
           "(redis+sentinel://host:port,.../service/db), which follow a failover.")


#: What a caller is told once writes were refused as READONLY for its whole budget
#: (:class:`Demoted`): a primary demoted after the start (at the start, :data:`REPLICA`).
DEMOTED = ("the Redis at {url} became a read-only replica (a failover demoted it?): point "
           "FLOWKIT_REDIS_URL at the new primary, or at your sentinels "
           "(redis+sentinel://host:port,.../service/db), which follow a failover.")


def refused(exc: BaseException) -> ConfigError:
    """The one-line error for credentials Redis refused, saying where they go."""
    return ConfigError(
        f"flowkit's Redis refused its credentials ({exc}): put the password in "
        "FLOWKIT_REDIS_URL, as redis://:PASSWORD@host:port/db (redis://USER:PASSWORD@... "
        "for an ACL user; redis+sentinel://:PASSWORD@host:port,.../service/db through "
        "sentinels)."
    )


#: A reply no Redis sends: the URL reaches another kind of server (an HTTP port, a proxy).
NOT_REDIS = (redis.exceptions.InvalidResponse,)


def not_redis(exc: BaseException, where: str = "flowkit's Redis (FLOWKIT_REDIS_URL)") -> ConfigError:
    """The one-line error for a server that answered as no Redis does (it was a traceback
    of redis-py's parser, in the doctor, the CLI and the web process's start)."""
    return ConfigError(
        f"{where} answered as no Redis does ({exc}): the URL reaches another kind of server "
        "(another service's port, an HTTP proxy?); point it at your Redis.")


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """A store operation: Redis out of reach raises StoreUnavailable, refused credentials
    ConfigError at once, not redis-py's errors."""

    @functools.wraps(fn)
    def operation(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except REFUSED as exc:
            raise refused(exc) from exc
        except NOT_REDIS as exc:  # before UNREACHABLE, which redis-py's errors may share
            raise not_redis(exc) from exc
        except UNREACHABLE as exc:
            raise StoreUnavailable(f"flowkit's Redis is unreachable: {exc}") from exc
        except CLUSTER_MOVING as exc:  # a command that never ran: the caller's outage path
            raise StoreUnavailable(f"flowkit's Redis Cluster is moving a slot or failing "
                                   f"over: {exc}") from exc
        except redis.exceptions.MovedError as exc:  # a plain client on a cluster's node
            raise ConfigError(CLUSTER_NODE) from exc

    return operation


class _Resend(Retry):
    """redis-py's Retry that never resends what Redis refused (:data:`REFUSED`)."""

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def retryable(error: Exception) -> bool:
            if isinstance(error, REFUSED):
                return False
            return is_retryable(error) if is_retryable else True

        return super().call_with_retry(do, fail, retryable, with_failure_count)


#: The pause before each resend: 0.1, 0.2, 0.4, 0.8, then 1 s.
_BACKOFF = ExponentialBackoff(cap=1.0, base=0.05)


def retries_within(seconds: float) -> int:
    """How many resends fit in ``seconds`` of pauses of :data:`_BACKOFF`."""
    retries, waited = 0, 0.0
    while waited + (pause := _BACKOFF.compute(retries + 1)) <= seconds:
        retries, waited = retries + 1, waited + pause
    return retries


def from_url(url: str, **kwargs) -> redis.Redis:
    """A client of the Redis at ``url``: ``redis://``, ``rediss://``, ``unix://`` as
    redis-py takes them, ``redis+sentinel://`` (the primary the sentinels name) or
    ``redis+cluster://`` (a ``RedisCluster``)."""
    cluster = ClusterURL.parse(url)
    if cluster is not None:
        return _cluster(cluster, **kwargs)
    sentinel = SentinelURL.parse(url)
    if sentinel is None:
        return redis.Redis.from_url(url, **kwargs)
    return _primary(sentinel, **kwargs)


#: RedisCluster's pause between TRYAGAIN resends (in the second half of its TTL).
_TRYAGAIN_PAUSE = 0.05


class _Cluster(RedisCluster):
    """redis-py's ``RedisCluster`` resending a command refused with TRYAGAIN for the
    process's Redis budget, not for its 16 tries (0.4 s): a script of a run, whose keys
    share a slot, meets TRYAGAIN while a reshard moves that slot's keys one batch at a
    time, and a step failed with ``ClusterError: TTL exhausted`` (its message consumed,
    its run left running without a lease). TRYAGAIN means the command did not run."""

    def __init__(self, *args: Any, resend_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # half the TTL resends at once, half after a pause each (redis-py's _execute_command)
        self.RedisClusterRequestTTL = max(RedisCluster.RedisClusterRequestTTL,
                                          2 * math.ceil(resend_seconds / _TRYAGAIN_PAUSE))

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        pipe = super().pipeline(*args, **kwargs)
        pipe.RedisClusterRequestTTL = self.RedisClusterRequestTTL  # its resends go alike
        return pipe


class _ClusterNodeConnection(redis.Connection):
    """A cluster node's connection that resends a write its primary refused with
    NOREPLICAS (``min-replicas-to-write``: a primary whose replica is down, or not yet
    caught up after a failover). The write never ran; as a connection error it is resent
    within the budget, then said as an outage, not a raw ``ResponseError`` (a 500)."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if "NOREPLICAS" not in str(exc):
                raise
            self.disconnect()
            raise redis.ConnectionError(f"the primary takes no writes now ({exc})") from exc


def _cluster(url: ClusterURL, **kwargs) -> redis.Redis:
    kwargs.pop("retry_on_error", None)  # RedisCluster resends on its own list of errors
    kwargs.pop("health_check_interval", None)
    try:  # RedisCluster reads the cluster's slots here: its errors were tracebacks
        return _Cluster(  # type: ignore[return-value]  # same command API as redis.Redis
            startup_nodes=[ClusterNode(host, port) for host, port in url.hosts],
            username=url.username, password=url.password,
            connection_class=_ClusterNodeConnection, **kwargs)
    except (RedisClusterUnreachableError, RedisClusterException) as exc:
        # redis-py says refused credentials in its text alone ("...cannot be connected...:
        # invalid username-password pair"): said as unreachable, the processes started,
        # told to "start it", and logged a traceback at each heartbeat
        if refused_credentials(exc) or any(word in str(exc) for word in _REFUSALS):
            raise refused(exc) from exc
        # "Cluster mode is not enabled on this node" is a setting; anything else an outage
        if isinstance(exc, RedisClusterUnreachableError) or "not enabled" not in str(exc):
            raise StoreUnavailable(f"flowkit's Redis Cluster is unreachable: {exc}") from exc
        raise ConfigError(
            "FLOWKIT_REDIS_URL names a Redis Cluster (redis+cluster://), but the Redis it "
            "reaches is not a cluster node (cluster-enabled no): point it at a cluster's "
            "nodes, or write redis://host:port/db for a single Redis.") from exc


def no_primary(exc: BaseException, url: str) -> bool:
    """Whether the sentinels of ``url`` named no primary that is up (redis-py's
    MasterNotFoundError, anywhere in ``exc``'s chain): a service name they do not monitor,
    or a failover not yet over; "cannot reach Redis, start it" sent people after a Redis
    that was running. Not when they refused their credentials (:func:`sentinels_refused`),
    nor when none of them answered (an outage, said as one)."""
    return (any(isinstance(cause, MasterNotFoundError) for cause in _chain(exc))
            and sentinels_refused(exc) is None and not _sentinels_unreachable(exc, url))


def said_no_primary(exc: BaseException, url: str) -> str:
    """What to say when :func:`no_primary`: that the URL names Redis servers, not sentinels,
    when they said so (each refused SENTINEL as an unknown command), else NO_PRIMARY."""
    refusals = [str(cause) for cause in _chain(exc) if isinstance(cause, MasterNotFoundError)]
    said = NOT_SENTINELS if any("unknown command 'SENTINEL'" in text for text in refusals) \
        else NO_PRIMARY
    return said.format(url=redacted(url))


def _sentinels_unreachable(exc: BaseException, url: str) -> bool:
    """Whether none of the sentinels of ``url`` could be reached: redis-py says that too as
    "no master found", which read "check the service name" for sentinels that were down."""
    sentinel_url = SentinelURL.parse(url)
    if sentinel_url is None:
        return False
    for cause in _chain(exc):
        if isinstance(cause, MasterNotFoundError):
            text = str(cause)
            return all(f"connecting to {host}:{port}" in text for host, port in sentinel_url.hosts)
    return False


#: How a sentinel's refusal of its credentials reads in redis-py's MasterNotFoundError.
_REFUSALS = ("AuthenticationError", "NOAUTH", "WRONGPASS", "invalid password",
             "Authentication required", "invalid username-password")


def sentinels_refused(exc: BaseException) -> str | None:
    """The sentinels' refusal of their credentials, when that is why no primary was found
    (redis-py files it under MasterNotFoundError, each sentinel's error in its text): it
    was said as a wrong service name."""
    for cause in _chain(exc):
        if isinstance(cause, MasterNotFoundError):
            text = str(cause)
            for word in _REFUSALS:
                if word in text:
                    return word
    return None


class _PrimaryConnection(SentinelManagedConnection):
    """redis-py's sentinel-managed connection, asking the sentinels again on a resend.

    redis-py 8 reconnects a dropped connection inside ``send_packed_command`` through
    ``connect_check_health``, which skips this class's ``connect`` (the one that asks the
    sentinels for the primary): a command resent after "The previous master is now a
    slave" went back to the demoted primary, met READONLY again and failed only when the
    whole retry budget was spent (a 30 s stall of every step in flight at a failover)."""

    def send_packed_command(self, command, check_health=True):
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if "NOREPLICAS" not in str(exc) or not self.connection_pool.is_master:
                raise
            # min-replicas-to-write refused the write, which never ran: a primary cut off
            # from its replicas (the one a failover left behind, or a new one whose
            # replicas have not joined yet). Resent, after asking the sentinels again.
            self.disconnect()
            raise redis.ConnectionError(f"the primary takes no writes now ({exc})") from exc

    def connect(self):
        pool = self.connection_pool.connection_pool_ref()  # redis-py's proxy holds it
        switches = getattr(pool, "flowkit_switches", None)
        if switches is not None:  # the first connection of this process starts it
            switches.ensure_running()
        super().connect()


def _primary(url: SentinelURL, **kwargs) -> redis.Redis:
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    sentinels = Sentinel(
        list(url.hosts),
        sentinel_kwargs={**timeouts, "password": url.sentinel_password},
    )
    primary = sentinels.master_for(url.service, db=url.db, username=url.username,
                                   password=url.password, connection_class=_PrimaryConnection,
                                   **kwargs)
    pool = primary.connection_pool
    pool.flowkit_switches = failover.watch(  # type: ignore[attr-defined]
        (url.hosts, url.service, url.sentinel_password), sentinels, url.service, pool)
    return primary


def _options(settings: Settings) -> dict[str, Any]:
    budget = settings.redis_retry_seconds
    return dict(
        decode_responses=True,
        health_check_interval=30,
        # redis-py's default (5 s) would cut blocking reads (XREAD BLOCK) short
        socket_timeout=settings.redis_socket_timeout,
        # a host that does not answer must not stretch a short budget (the API's)
        socket_connect_timeout=max(0.5, min(5.0, budget / 2)),
        retry=_Resend(_BACKOFF, retries=retries_within(budget)),
        retry_on_error=list(UNREACHABLE),
    )


class Demoted(redis.ConnectionError, StoreUnavailable):
    """A write a plain URL's Redis refused with READONLY: the primary it reached was
    demoted to a replica (a managed Redis's failover, which moves the host name to the
    new primary). The write never ran; as a connection error it is resent on a new
    connection, which finds the new primary when the name moved, within the budget, then
    said as an outage that names the cause (it was a raw ReadOnlyError: a 500, a CLI
    traceback, a step failed as if its code had raised). Also a StoreUnavailable, which
    ``guarded`` raises for it, naming it in the chain (:func:`demoted`)."""


class _ResendDemoted:
    """A connection of the plain pool raising :class:`Demoted` for READONLY, as redis-py's
    sentinel-managed connection does for a demoted primary."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.exceptions.ReadOnlyError as exc:
            self.disconnect()  # type: ignore[attr-defined]
            raise Demoted(f"the Redis reached is a read-only replica now ({exc})") from exc


def demoted(exc: BaseException) -> bool:
    """Whether ``exc``'s chain holds a :class:`Demoted` refusal."""
    return any(isinstance(cause, Demoted) for cause in _chain(exc))


def client(settings: Settings) -> redis.Redis:
    options = {**_options(settings), "max_connections": settings.connection_pool_size}
    cluster = ClusterURL.parse(settings.redis_url)
    if cluster is not None:
        return _cluster(cluster, resend_seconds=settings.redis_retry_seconds, **options)
    sentinel = SentinelURL.parse(settings.redis_url)
    if sentinel is not None:
        return _primary(sentinel, **options)
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, timeout=settings.redis_socket_timeout, **options
    )
    base = pool.connection_class  # plain, TLS or unix socket, by the URL's scheme
    pool.connection_class = type(f"Demotable{base.__name__}", (_ResendDemoted, base), {})
    return redis.Redis(connection_pool=pool)


def pubsub_client(settings: Settings) -> redis.Redis:
    """A client for pub/sub only, configured as :func:`client`'s, with a pool of its own
    and no bound: a subscription holds its connection while it is kept
    (:class:`flowkit.store.streams.Subscriptions`), which in the store's pool would take
    a slot its commands need. Its connections are named :data:`WATCH_CLIENT_NAME` in
    ``CLIENT LIST``."""
    return from_url(settings.redis_url, client_name=WATCH_CLIENT_NAME, **_options(settings))


#: The name (``CLIENT SETNAME``) of the connections that watch runs' ends.
WATCH_CLIENT_NAME = "flowkit-end-watch"


def blocking_client(settings: Settings, block_seconds: float) -> redis.Redis:
    """A client of one connection for reads that block up to ``block_seconds``."""
    return from_url(
        settings.redis_url, decode_responses=True, socket_timeout=block_seconds + 5,
        socket_connect_timeout=5,
    )


def unblocked(exc: BaseException) -> bool:
    """Whether a blocking read (``XREAD BLOCK``) was cut by its server ceasing to be the
    primary (a Sentinel or Cluster failover: ``-UNBLOCKED ... instance state changed``):
    nothing was lost, the read is to be made again (``flowkit follow`` died of it)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("UNBLOCKED")


def is_redis_url(url: str) -> bool:
    """Whether redis-py takes ``url`` (flowkit's Sentinel and Cluster forms have their own
    parser, whose errors are ConfigError)."""
    if url.startswith(("redis+sentinel://", "redis+cluster://")):
        return True
    try:
        redis.connection.parse_url(url)
    except ValueError:
        return False
    return True


def lost_connection(exc: BaseException) -> bool:
    """Whether redis-py failed to reach its server (a connection error or a timeout)
    anywhere in ``exc``'s chain: Celery's result backend wraps it in a RuntimeError."""
    return any(isinstance(cause, (redis.ConnectionError, redis.TimeoutError))
               for cause in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and all(cause is not s for s in seen):
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    return seen


def refused_credentials(exc: BaseException) -> bool:
    """Whether Redis refused the credentials (:data:`REFUSED`) anywhere in ``exc``'s chain:
    kombu wraps redis-py's error in its OperationalError, as it does an outage."""
    return any(isinstance(cause, REFUSED) for cause in _chain(exc))


def database_out_of_range(name: str, url: str) -> str:
    """What a URL whose database the Redis lacks (``/99``) is told."""
    example = ("redis+sentinel://host:port,.../service/0" if url.startswith("redis+sentinel://")
               else "redis://host:port/0")  # a Sentinel URL was shown a plain one
    return (f"the database index in {name}={redacted(url)} is out of range for that Redis "
            "server (Redis has 16, 0-15, unless `databases` in redis.conf says more); "
            f"use one it has, e.g. {example}.")


def refused_database(exc: BaseException) -> bool:
    """Whether Redis refused the URL's database number (SELECT past its ``databases``),
    anywhere in ``exc``'s chain: kombu and flowkit wrap redis-py's error."""
    return any(isinstance(cause, redis.ResponseError) and "DB index is out of range" in str(cause)
               for cause in _chain(exc))
