"""Redis URLs flowkit takes beyond redis-py's own: ``redis+sentinel://`` for Redis Sentinel,
``redis+cluster://`` for Redis Cluster.

redis-py's ``from_url`` knows ``redis://``, ``rediss://`` and ``unix://`` and raises a bare
``ValueError`` for anything else; Celery writes Sentinel as ``sentinel://h:p;sentinel://h:p``
with the service name in a transport option. One URL should name the store's Redis for
every process (workers, web, beat, CLI), so flowkit takes the form people write::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?sentinel_password=...]

and parses it here, once, into what the store (redis-py's ``Sentinel``) and Celery's
broker and result backend (kombu's ``sentinel://`` transport) each need. The password is
the data nodes'; ``sentinel_password`` the sentinels' own, when they have one.

A Cluster is written ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (a
few of its nodes; the client discovers the rest). It is the store's only: Celery has no
Cluster transport, so the broker then needs a URL of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from .errors import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
_FORM = ("redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]"
         "[?sentinel_password=...]")


@dataclass(frozen=True)
class SentinelURL:
    """The parts of a ``redis+sentinel://`` URL."""

    hosts: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> SentinelURL | None:
        """The URL's parts; None when it is not a Sentinel URL; ConfigError when malformed."""
        if not url.startswith(SENTINEL_SCHEME + "://"):
            return None
        username, password, netloc, path = _split(url, SENTINEL_SCHEME)
        hosts = tuple(_host(part, url) for part in netloc.split(",") if part)
        path, _, query = path.partition("?")
        parts = [p for p in path.split("/") if p]
        if not hosts or not parts or len(parts) > 2:
            raise ConfigError(f"{redacted(url)}: a Sentinel URL names its sentinels and the "
                              f"service they watch: {_FORM}.")
        try:
            db = int(parts[1]) if len(parts) == 2 else 0
        except ValueError:
            raise ConfigError(f"{redacted(url)}: the database after the service name must be a "
                              f"number: {_FORM}.") from None
        options = parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(options) - {"sentinel_password"})
        if unknown:  # dropped unsaid: ?ssl=true connected in plain text, a typo went unseen
            raise ConfigError(
                f"{redacted(url.partition('?')[0])}: a Sentinel URL takes no ?{unknown[0]}=, only "
                f"?sentinel_password= (TLS through sentinels is not supported): {_FORM}.")
        sentinel_password = options.get("sentinel_password", [None])[0]
        return cls(hosts, unquote(parts[0]), db, username, password, sentinel_password)

    def celery_url(self) -> str:
        """The same deployment as Celery's broker and result backend write it (kombu's
        ``sentinel://`` transport; the service goes in the ``master_name`` option)."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.hosts)

    def transport_options(self) -> dict[str, object]:
        """Celery's transport options for :meth:`celery_url`."""
        options: dict[str, object] = {"master_name": self.service}
        if self.sentinel_password:
            options["sentinel_kwargs"] = {"password": self.sentinel_password}
        return options


def _split(url: str, scheme: str) -> tuple[str | None, str | None, str, str]:
    """(username, password, the hosts part, the path) of ``scheme://[[u]:p@]hosts/path``."""
    userinfo, _, rest = url[len(scheme) + 3:].rpartition("@")
    netloc, _, path = rest.partition("/")
    user, _, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) or None, netloc, path


def _host(part: str, url: str, form: str = _FORM, default_port: int = 26379) -> tuple[str, int]:
    split = urlsplit(f"//{part}")
    try:
        port = split.port or default_port
    except ValueError:
        raise ConfigError(f"{redacted(url)}: {part!r} is not host:port: {form}.") from None
    if not split.hostname:
        raise ConfigError(f"{redacted(url)}: {part!r} is not host:port: {form}.")
    return split.hostname, port


#: Query parameters that are secrets: redis-py's and kombu's ``password``, our Sentinel
#: URL's ``sentinel_password`` (their names percent-decoded, as the clients read them).
_SECRETS = frozenset({"password", "sentinel_password"})
_QUERY_PARAM = re.compile(r"([?&])([^=&]*)=([^&]*)")
#: A scheme mistyped (``redis//``, ``redis:/``, ``amqp//``): shown, it says what is wrong.
_MISTYPED_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:?/+:?")
#: Where Celery's Sentinel form joins one URL per sentinel (``sentinel://a;sentinel://b``).
_NEXT_URL = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")


def redacted(url: str) -> str:
    """The URL without its secrets, for messages: the user and password, and the
    ``password`` / ``sentinel_password`` query values, of each URL of a ``;``-joined list."""
    return ";".join(_redacted_one(part) for part in _NEXT_URL.split(url))


def redacted_query(url: str) -> str:
    """:func:`redacted`, and every query value blanked: an HTTP API's address may carry a
    gateway's key in its query under any name (``?code=``, ``?key=``)."""
    return _QUERY_PARAM.sub(lambda param: f"{param.group(1)}{param.group(2)}=***", redacted(url))


def reached(url: str) -> str:
    """The URL as a message that it cannot be reached shows it: redacted, and with the address
    the client read when the URL names none (``redis://`` is localhost:6379 to redis-py)."""
    shown = redacted(url)
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError:
        return shown
    if split.scheme in ("redis", "rediss", "amqp", "amqps") and not split.hostname:
        default = 6379 if split.scheme.startswith("redis") else 5672
        return f"{shown} (localhost:{port or default})"
    return shown


def _redacted_one(url: str) -> str:
    url = _QUERY_PARAM.sub(_blank_secret, url)  # first: a password there may hold an "@"
    head, at, tail = url.rpartition("@")  # the last "@": a raw password may hold one
    if not at:
        return url
    if "://" in head:
        return f"{head.partition('://')[0]}://***@{tail}"
    # a URL refused for its mistyped scheme was shown with its password, as the user and
    # password were taken for the scheme
    mistyped = _MISTYPED_SCHEME.match(head)
    return f"{mistyped.group(0) if mistyped else ''}***@{tail}"


def _blank_secret(param: re.Match[str]) -> str:
    sep, name, _ = param.groups()
    return f"{sep}{name}=***" if unquote(name).lower() in _SECRETS else param.group(0)


CLUSTER_SCHEME = "redis+cluster"
_CLUSTER_FORM = "redis+cluster://[[user]:password@]host:port[,host:port...]"


@dataclass(frozen=True)
class ClusterURL:
    """The parts of a ``redis+cluster://`` URL: some of a Redis Cluster's nodes (redis-py's
    ``RedisCluster`` discovers the others). A cluster has one database, so no ``/db``."""

    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterURL | None:
        """The URL's parts; None when it is not a Cluster URL; ConfigError when malformed."""
        if not url.startswith(CLUSTER_SCHEME + "://"):
            return None
        username, password, netloc, path = _split(url, CLUSTER_SCHEME)
        hosts = tuple(_host(part, url, _CLUSTER_FORM, 6379) for part in netloc.split(",") if part)
        if not hosts:
            raise ConfigError(f"{redacted(url)}: a Cluster URL names at least one of the "
                              f"cluster's nodes: {_CLUSTER_FORM}.")
        if path.partition("?")[0].strip("/") not in ("", "0"):
            raise ConfigError(f"{redacted(url)}: a Redis Cluster has only database 0; leave "
                              f"the /db out: {_CLUSTER_FORM}.")
        return cls(hosts, username, password)


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME + "://")


def not_a_cluster(url: str, variable: str) -> None:
    """ConfigError when Celery is handed a ``redis+cluster://`` URL (it has no Cluster
    transport): with a Cluster store, ``variable`` must name a Redis or RabbitMQ of its own."""
    if is_cluster(url):
        # a result backend is a Redis (RabbitMQ has none): advised amqp://, it failed the worker
        rabbitmq = "" if variable == "FLOWKIT_RESULT_BACKEND" else " or RabbitMQ (amqp://...)"
        raise ConfigError(
            f"{variable} is the Redis Cluster of FLOWKIT_REDIS_URL ({redacted(url)}), and Celery "
            f"cannot use a Redis Cluster: set {variable} to a plain Redis (redis://host:port/0)"
            f"{rabbitmq}."
        )


def for_celery(broker: str, backend: str) -> None:
    """ConfigError when the broker or result backend URL is one Celery cannot use
    (:func:`not_a_cluster`): checked as the Celery app is built, and by the web process
    as it starts, before it serves starts that could not be sent."""
    not_a_cluster(broker, "FLOWKIT_BROKER_URL")  # a Cluster store needs its own broker
    not_a_cluster(backend, "FLOWKIT_RESULT_BACKEND")


#: The options of a RabbitMQ URL's query that kombu reads as numbers of seconds.
AMQP_SECONDS = ("heartbeat", "connect_timeout")


def amqp_options_read(broker: str) -> None:
    """ConfigError when an option of a RabbitMQ URL's query that kombu reads as seconds is
    no number (``?heartbeat=x``): it was a ValueError traceback from the worker and the
    doctor."""
    for one in broker.split(";"):  # a failover list
        parts = urlsplit(one)
        if parts.scheme not in ("amqp", "amqps", "pyamqp"):
            continue
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in AMQP_SECONDS or not value:
                continue
            try:
                float(value)
            except ValueError:
                raise ConfigError(
                    f"FLOWKIT_BROKER_URL={redacted(one)!r}: its ?{name}= is a number of "
                    f"seconds, not {value!r}; fix it (heartbeat=60) or leave it out.") from None


def shared_server_db(store_url: str, broker_url: str) -> int | None:
    """The broker's database number when ``broker_url`` names the very Redis server of
    ``store_url`` (plain ``redis://``, ``rediss://`` or ``unix://`` URLs alike in scheme, host,
    port, user and password; the database may differ); None otherwise (another server, a
    Sentinel or Cluster URL, RabbitMQ). A run's first message can then be pushed by the
    script that stores the run (flowkit.engine.publish)."""
    store, broker = _plain(store_url), _plain(broker_url)  # the broker's as Celery has it
    if store is None or broker is None or store[0] != broker[0]:
        return None
    return broker[1]


def _plain(url: str) -> tuple[tuple, int] | None:
    """((scheme, host, port or socket path, user, password), db) of a plain Redis URL."""
    try:
        split = urlsplit(url)
        scheme = split.scheme
        if scheme not in ("redis", "rediss", "unix", "redis+socket"):
            return None
        query = parse_qs(split.query)
        if scheme in ("unix", "redis+socket"):  # kombu's name of a socket (celery_redis_url)
            scheme, where = "unix", (split.path,)
            db = int(query.get("db", query.get("virtual_host", ["0"]))[0])
        else:
            where = (split.hostname or "localhost", split.port or 6379)
            path = split.path.strip("/")
            db = int(path or query.get("db", ["0"])[0])
    except ValueError:
        return None
    return (scheme, *where, unquote(split.username or ""), unquote(split.password or "")), db


def credentials_in_userinfo(url: str) -> str:
    """A ``redis://`` URL with its ``?password=`` (and ``?username=``) moved before the host,
    where Celery reads them: redis-py takes either place, kombu's Redis transport adds the
    query's password to the one it parses and fails (a TypeError) on every publish. As in
    redis-py, credentials before the host win over the query's."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = {k: v for k, v in query if k in ("username", "password")}
    if not given:
        return url
    host = parts.netloc.rpartition("@")[2]
    # an empty one before the host (``redis://:@h``) does not win, as in redis-py
    username = unquote(parts.username) if parts.username else given.get("username", "")
    password = unquote(parts.password) if parts.password else given.get("password")
    userinfo = quote(username, safe="") + (f":{quote(password, safe='')}" if password else "")
    rest = urlencode([(k, v) for k, v in query if k not in given])
    return urlunsplit((parts.scheme, f"{userinfo}@{host}" if userinfo else host, parts.path,
                       rest, parts.fragment))


def celery_redis_url(url: str) -> str:
    """A Redis URL of the store as Celery's broker and result backend read it (its
    credentials before the host: :func:`credentials_in_userinfo`). A ``unix://`` socket is
    kombu's ``redis+socket://``, its ``?db=`` as ``?virtual_host=``: Celery has no ``unix``
    transport, and the worker died at start (``No such transport: unix``), the CLI and the
    API with a traceback. A ``rediss://`` URL without ``?ssl_cert_reqs=`` verifies the
    server's certificate, as redis-py does for the store: Celery refused it, at start."""
    url = credentials_in_userinfo(url)
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.scheme == "unix":
        db = [v for k, v in query if k == "db"]
        query = [(k, v) for k, v in query if k != "db"] + [("virtual_host", v) for v in db[-1:]]
        # by hand: urlunsplit drops the "//" of an empty host (redis+socket:/path)
        rest = f"?{urlencode(query)}" if query else ""
        return f"redis+socket://{parts.netloc}{parts.path}{rest}"
    if parts.scheme == "rediss" and not any(k == "ssl_cert_reqs" for k, _ in query):
        query.append(("ssl_cert_reqs", "required"))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query),
                           parts.fragment))
    return url


#: What to say when the sentinels of ``url`` refused their own credentials (redis-py says
#: "no master found", each sentinel's refusal in its text).
SENTINELS_REFUSED = ("the sentinels of {url} refused their credentials ({why}): give their "
                     "password as ?sentinel_password=... in FLOWKIT_REDIS_URL (redis+sentinel://"
                     ":DATA_PASSWORD@host:port,host:port/service/db?sentinel_password=SENTINEL_"
                     "PASSWORD; the sentinels' is their requirepass), or, when those addresses "
                     "are your Redis servers rather than their sentinels (a sentinel listens on "
                     "26379 by default), list the sentinels'.")

#: What to say when the sentinels of ``url`` name no primary that is up.
NO_PRIMARY = ("the sentinels of {url} name no primary of that service that is up: check the "
              "service name in FLOWKIT_REDIS_URL (redis-cli -p 26379 SENTINEL MASTERS lists "
              "those they monitor), or wait for a failover to end.")

#: What to say when the servers ``url`` names as sentinels are Redis servers (the data's
#: port written for the sentinels': 6379 for 26379): it was said as a wrong service name.
NOT_SENTINELS = ("the servers of {url} answered as no sentinel does (they know no SENTINEL "
                 "command): list the sentinels' addresses in FLOWKIT_REDIS_URL (port 26379 by "
                 "default), not the Redis servers'.")
