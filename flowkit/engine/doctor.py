"""``flowkit doctor``'s checks: is this deployment able to keep its promises, and what to fix.

Each check returns :class:`Finding` s (``ok``, ``warning`` or ``failure``, a message and
the fix) instead of printing or raising, so the CLI renders them and the worker's and the
web process's startup checks or the API can reuse them. A **failure** loses, repeats or
stalls work now or at a routine event (a Redis restart, a worker crash): Redis out of
reach, AOF off, a memory limit that evicts keys, a broker visibility timeout shorter than
a step, beat not sweeping, no live worker, a routed queue no live worker consumes, a
worker whose consumer takes nothing from a queue where messages wait. A
**warning** is a state that may be intended but is worth a look: workers on different
flowkit or workflow versions (a rolling deploy, or a worker left behind), a broker Redis
without AOF (the reaper re-drives what it loses), an eviction policy that would evict once
a memory limit is set, an app the doctor could not import.

It also answers what the deployment serves and runs (:func:`served`,
:func:`running_steps`) for the workers' announcements and ``flowkit workers``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp.exceptions
import kombu
import kombu.exceptions

from ..component import registered
from ..config import is_amqp, unread_variables
from ..errors import ConfigError, StoreUnavailable
from ..store import (
    HANDED_OVER,
    Store,
    get_store,
    no_primary,
    said_no_primary,
    sentinels_refused,
)
from ..store.connection import CLUSTER_NODE, NOT_REDIS, REFUSED, REPLICA
from ..store.server import probe
from ..urls import SENTINELS_REFUSED, is_cluster, reached, redacted
from ..version import __version__
from ..workflow import Workflow, workflows
from . import consumers
from .control import live_workers, unconsumed, undefined_on

OK, WARNING, FAILURE = "ok", "warning", "failure"


@dataclass(frozen=True)
class Finding:
    """One check's verdict: ``level`` is ok, warning or failure; ``fix`` says what to do."""

    check: str
    level: str
    message: str
    fix: str | None = None

    @property
    def ok(self) -> bool:
        return self.level != FAILURE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# -- what a process serves (announced by workers, checked by the doctor) ---------------------


def longest_step_seconds() -> float | None:
    """Worst-case duration of any configured step (all attempts, all waits); None if unbounded."""
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


def served(default_queue: str) -> dict[str, Any]:
    """What this process's code serves, for a worker's announcement: the flowkit version, its
    workflows' versions, the queues they route to and its longest step."""
    found = workflows()
    return {
        "flowkit": __version__,
        "workflows": {name: wf.version for name, wf in sorted(found.items())},
        "routes": _routes(found.values(), default_queue),
        "longest_step": longest_step_seconds(),
    }


def _routes(found: Iterable[Workflow], default_queue: str) -> dict[str, list[str]]:
    """Queue -> the workflows whose tasks go to it."""
    routes: dict[str, set[str]] = {}
    for wf in found:
        for queue in wf.queues(default_queue):
            routes.setdefault(queue, set()).add(wf.name)
    return {queue: sorted(names) for queue, names in sorted(routes.items())}


def running_steps(store: Store | None = None) -> list[dict[str, Any]]:
    """Every step that holds a lease now: run, workflow, step, attempt, node, worker (the
    process), and when its lease lapses unless renewed."""
    store = store or get_store()
    steps = []
    for run_id, step, lease in store.leases():
        if lease.get("token") == HANDED_OVER:
            continue  # handed over: no process runs it any more
        worker = str(lease.get("worker", ""))
        workflow, = store.run_fields(run_id, "workflow")
        steps.append({"run": run_id, "workflow": workflow, "step": step,
                      "attempt": lease.get("attempt"), "node": worker.rpartition(":")[0],
                      "worker": worker, "lease_expires": lease.get("expires")})
    return sorted(steps, key=lambda s: (s["node"], s["run"], s["step"]))


# -- the checks ------------------------------------------------------------------------------


def _said(level: str, message: str) -> Finding:
    """A redis finding from one of the store's one-line messages ("what: fix"), as the CLI
    prints them: the part before the first ": " is the finding, the rest its fix."""
    what, _, fix = message.partition(": ")
    return Finding("redis", level, what[0].upper() + what[1:] + ".", fix[0].upper() + fix[1:])


def startup_findings(redis_url: str) -> list[Finding]:
    """What a worker or web process says as it starts: the store's Redis settings that lose
    work (AOF off, an evicting ``maxmemory-policy``), at once, never after a retry budget.
    Refused credentials (the sentinels' too) and a plain URL at a Cluster's node raise
    ConfigError (the process refuses to start: no wait fixes them; it started, said "Start
    it", and logged a traceback at each heartbeat); a Redis that does not answer yet is a
    warning, as it may come up after this process, and sentinels that name no primary say
    so (a failover may end; the service name may be wrong)."""
    try:
        info = probe(redis_url)
    except StoreUnavailable as exc:
        why = sentinels_refused(exc)
        if why is not None:
            raise ConfigError(SENTINELS_REFUSED.format(url=redacted(redis_url), why=why)) from None
        if no_primary(exc, redis_url):
            return [_said(WARNING, said_no_primary(exc, redis_url))]
        return [Finding("redis", WARNING, f"Redis at {reached(redis_url)} does not answer yet; "
                        "flowkit retries each command for FLOWKIT_REDIS_RETRY_SECONDS.",
                        "Start it, or point FLOWKIT_REDIS_URL at your Redis.")]
    if info.get("cluster_enabled") and not is_cluster(redis_url):
        raise ConfigError(CLUSTER_NODE)
    if info.get("replica_of"):  # it started, and every write failed: a traceback at each beat
        raise ConfigError(REPLICA.format(primary=info["replica_of"]))
    return [f for f in redis_settings(info, "redis") if f.level != OK]


def say(findings: Iterable[Finding], who: str, log: Any) -> None:
    """Log each finding loudly (a warning with its fix) for ``who`` ("worker", "web")."""
    for f in findings:
        log.warning("flowkit %s: %s %s Fix: %s", who, "WARNING" if f.level == WARNING
                    else "DATA AT RISK", f.message, f.fix)


def examine(
    app_workflows: Iterable[Workflow] | None, default_queue: str, broker_url: str | None,
    store: Store | None = None, now: float | None = None,
) -> list[Finding]:
    """Every check, in the order a person fixes them. ``app_workflows``: the workflows of
    the user's app (None: it was not imported; the workers' announced routes still count);
    ``broker_url``: the Celery broker's, checked too when it is another Redis server. The
    ``settings`` check needs no Redis: it is said when Redis does not answer too, the case a
    misspelled FLOWKIT_REDIS_URL makes (it was said only when Redis answered)."""
    return _examined(app_workflows, default_queue, broker_url, store, now) + \
        unknown_variables(os.environ)


def _examined(app_workflows: Iterable[Workflow] | None, default_queue: str,
              broker_url: str | None, store: Store | None, now: float | None) -> list[Finding]:
    store = store or get_store()
    now = time.time() if now is None else now
    url = store.settings.redis_url
    try:
        info = store.server_info()
    except StoreUnavailable as exc:
        why = sentinels_refused(exc)
        if why is not None:
            return [_said(FAILURE, SENTINELS_REFUSED.format(url=redacted(url), why=why))]
        if no_primary(exc, url):
            return [_said(FAILURE, said_no_primary(exc, url))]
        if is_cluster(url):  # a node down, its replica not yet promoted: "start it" misled
            return [Finding("redis", FAILURE, f"The Redis Cluster at {redacted(url)}, or one of "
                            f"its nodes, does not answer ({exc.__cause__ or exc}).",
                            "Start the node that is down, or wait for its replica to take over "
                            "(redis-cli --cluster check HOST:PORT lists the nodes and their "
                            "slots).")]
        return [Finding("redis", FAILURE, f"Redis at {reached(url)} does not answer.",
                        "Start it, or point FLOWKIT_REDIS_URL at your Redis.")]
    except ConfigError as exc:  # refused credentials, or no Redis: the store's one-line error
        if isinstance(exc.__cause__, NOT_REDIS):
            return [Finding("redis", FAILURE, f"The server at {redacted(url)} answered as no "
                            f"Redis does ({exc.__cause__}).", "Point FLOWKIT_REDIS_URL at your "
                            "Redis (it reaches another kind of server: another service's port, "
                            "an HTTP proxy?).")]
        return [Finding("redis", FAILURE, f"Redis at {redacted(url)} refused the credentials "
                        f"({exc.__cause__ or exc}).",
                        "Put the password in FLOWKIT_REDIS_URL, as redis://:PASSWORD@host:port/db "
                        "(redis://USER:PASSWORD@... for an ACL user; redis+sentinel://:PASSWORD@"
                        "host:port,.../service/db through sentinels).")]
    if info.get("replica_of"):
        return [_said(FAILURE, REPLICA.format(primary=info["replica_of"]))]
    found = [Finding("redis", OK, f"Redis {info['version']} at {redacted(url)} answers.")]
    found += redis_settings(info, "redis")
    found += cluster_nodes(info)
    if broker_url and _server(broker_url) not in (None, _server(url)):
        found += broker(broker_url)
    elif broker_url and is_amqp(broker_url):
        found += amqp_broker(broker_url)
    backend = store.settings.result_backend
    server = _server(backend) if backend else None  # (a sentinel:// one is not probed)
    if server is not None and server not in (_server(url), _server(broker_url or "")):
        found += result_backend(backend)
    workers = live_workers(store)
    found += worker_presence(workers)
    found += stuck_consumers(store.stuck_consumers())
    found += beat(store.last_sweep(), now)
    found += failing_schedules(store.schedule_errors())
    found += queues(app_workflows, default_queue, workers)
    found += same_broker(store.settings.broker, workers)
    found += broker_timeout(broker_url or store.settings.broker, workers,
                            store.settings.visibility_timeout)
    found += versions(workers)
    return found


def unknown_variables(environ: Mapping[str, str]) -> list[Finding]:
    """FLOWKIT_* variables flowkit does not read: a misspelled one (FLOWKIT_BROKR_URL) was
    ignored without a word, and its default used instead. FLOWKIT_TEST_* are the tests'."""
    return [Finding("settings", WARNING, f"{name} is not a flowkit setting: flowkit ignores it"
                    + (f" (did you mean {close}?)." if close else "."),
                    "Rename it, or unset it (the README's Configuration lists the settings).")
            for name, close in unread_variables(environ).items()]


def redis_settings(info: dict[str, Any], check: str, level: str = FAILURE) -> list[Finding]:
    """AOF on and writing; no eviction (``maxmemory-policy noeviction``)."""
    found = []
    if not info["aof_enabled"]:
        where = f" on {', '.join(info['aof_off'])}" if info.get("aof_off") else ""
        found.append(Finding(
            f"{check}.aof", level,
            f"AOF is off{where}: a Redis restart loses what was written since the last "
            "snapshot (runs, checkpoints, events).",
            "Turn it on: CONFIG SET appendonly yes, and `appendonly yes` in redis.conf "
            "(appendfsync everysec or always)."))
    elif info.get("aof_last_write_status") not in (None, "ok"):
        found.append(Finding(
            f"{check}.aof", level, "AOF is on but its last write failed (disk full?).",
            "Check Redis's log and free disk space for its appendonly file."))
    else:
        found.append(Finding(f"{check}.aof", OK, "AOF is on."))
    policy, limit = info.get("maxmemory_policy"), info.get("maxmemory", 0)
    if policy in (None, "noeviction"):
        found.append(Finding(f"{check}.maxmemory-policy", OK,
                             "maxmemory-policy is noeviction: Redis never drops a key."))
    else:
        found.append(Finding(
            f"{check}.maxmemory-policy", level if limit else WARNING,
            f"maxmemory-policy is {policy}"
            + (f" with maxmemory {limit} bytes: Redis drops keys (runs, leases, queued "
               "messages) when it is full." if limit else
               ": no memory limit is set now, but with one Redis would drop keys."),
            "CONFIG SET maxmemory-policy noeviction, and `maxmemory-policy noeviction` in "
            "redis.conf (a full Redis then refuses writes instead of losing runs)."))
    return found


def cluster_nodes(info: dict[str, Any]) -> list[Finding]:
    """A Redis Cluster's failed nodes, and the primaries a failover left without a replica
    (:func:`flowkit.store.server.cluster_health`): it serves, but one more crash stops runs."""
    failed = info.get("failed_nodes")
    if not failed:
        return []
    lone = info.get("lone_primaries") or []
    return [Finding(
        "redis.cluster", WARNING,
        f"Redis Cluster node{'s' if len(failed) > 1 else ''} {', '.join(failed)} "
        f"{'are' if len(failed) > 1 else 'is'} failed (down or cut off): the cluster serves "
        "without it" + (f", and primary {', '.join(lone)} has no replica left: its crash "
                        "would stop the runs in its slots until it is back." if lone else "."),
        "Start the failed node again (it rejoins as a replica of the primary that took its "
        "slots), or replace it (redis-cli --cluster del-node HOST:PORT NODE_ID, then "
        "redis-cli --cluster add-node NEW:PORT HOST:PORT --cluster-slave).")]


def broker(url: str) -> list[Finding]:
    """The Celery broker on a Redis of its own: reachable, and what it loses."""
    try:
        info = probe(url)
    except StoreUnavailable:
        return [Finding("broker", FAILURE, f"The Celery broker at {reached(url)} does not "
                        "answer: no step can be sent or taken.",
                        "Start it, or point FLOWKIT_BROKER_URL at it.")]
    except ConfigError as exc:  # no Redis, or credentials it refused
        return [Finding("broker", FAILURE, f"The Celery broker: {exc}",
                        "Fix FLOWKIT_BROKER_URL.")]
    # messages only: the reaper re-drives runs whose message was lost, hence warnings
    return [Finding("broker", OK, f"Broker Redis {info['version']} at {redacted(url)} answers."),
            *redis_settings(info, "broker", level=WARNING)]


def result_backend(url: str) -> list[Finding]:
    """Celery's result backend on a Redis of its own (FLOWKIT_RESULT_BACKEND): a chord
    counts its branches there, so without it no parallel step or fan-out joins."""
    try:
        info = probe(url)
    except StoreUnavailable:
        return [Finding("result_backend", FAILURE, f"The Celery result backend at "
                        f"{reached(url)} does not answer: no parallel step or fan-out can join "
                        "(Celery counts their branches there).",
                        "Start it, or point FLOWKIT_RESULT_BACKEND at it (unset, it is the "
                        "broker's Redis, or the store's).")]
    except ConfigError as exc:  # no Redis, or credentials it refused
        return [Finding("result_backend", FAILURE, f"The Celery result backend: {exc}",
                        "Fix FLOWKIT_RESULT_BACKEND.")]
    return [Finding("result_backend", OK, f"Result backend Redis {info['version']} at "
                    f"{redacted(url)} answers.")]


def amqp_broker(url: str, timeout: float = 3.0) -> list[Finding]:
    """The Celery broker on RabbitMQ: it answers and takes flowkit's credentials (the
    doctor said "All is well" with RabbitMQ stopped, then blamed beat)."""
    try:
        version = _rabbitmq_version(url, timeout)
    except amqp.exceptions.AMQPError as exc:  # it answered, and refused
        return [Finding("broker", FAILURE, f"The Celery broker at {redacted(url)} refused "
                        f"flowkit: {str(exc).rstrip('.')}.", AMQP_REFUSED_FIX)]
    except (kombu.exceptions.OperationalError, OSError) as exc:
        return [Finding("broker", FAILURE, f"The Celery broker at {reached(url)} does not "
                        f"answer ({exc}): no step can be sent or taken.",
                        "Start RabbitMQ, or point FLOWKIT_BROKER_URL at it.")]
    return [Finding("broker", OK, f"Broker RabbitMQ {version} at {redacted(url)} answers.")]


#: How to fix the credentials RabbitMQ refused.
AMQP_REFUSED_FIX = ("Fix the user, password or vhost in FLOWKIT_BROKER_URL (rabbitmqctl "
                    "list_users, list_vhosts).")


def _rabbitmq_version(url: str, timeout: float) -> str:
    """The version of the RabbitMQ at ``url``; AMQPError when it refuses the connection (its
    user, password or vhost), kombu's OperationalError or OSError when it does not answer."""
    with kombu.Connection(url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        version = conn.connection.server_properties.get("version", "?")
    return version.decode(errors="replace") if isinstance(version, bytes) else version


#: The broker URL schemes a worker checks as it starts: RabbitMQ's (py-amqp), and the
#: Redis forms the store reads (Celery's own ``sentinel://`` and ``redis+socket://`` not).
_PROBED_AMQP = ("amqp", "amqps", "pyamqp")
_PROBED_REDIS = ("redis", "rediss", "unix", "redis+sentinel")


def broker_startup_findings(broker_url: str, store_url: str, timeout: float = 3.0
                            ) -> list[Finding]:
    """What a worker says of its Celery broker as it starts (the store's Redis is
    :func:`startup_findings`'): credentials the broker refuses (a user, password or vhost)
    raise ConfigError, and the worker refuses to start. It stayed up, and retried: six
    times a second on RabbitMQ, with a CRITICAL traceback each few, for ever on Redis, and a
    process manager saw a healthy unit. A broker that does not answer yet is a warning (it
    may come up after the worker)."""
    scheme = broker_url.partition("://")[0].lower()
    if broker_url == store_url or scheme not in (*_PROBED_AMQP, *_PROBED_REDIS):
        return []  # the store's own Redis (checked already), or a form Celery's own reads
    try:
        if scheme in _PROBED_AMQP:
            _rabbitmq_version(broker_url, timeout)
        else:
            probe(broker_url, timeout, "FLOWKIT_BROKER_URL")
    except amqp.exceptions.AMQPError as exc:
        raise ConfigError(f"the Celery broker at {redacted(broker_url)} refused flowkit "
                          f"({str(exc).rstrip('.')}): {AMQP_REFUSED_FIX[0].lower()}"
                          f"{AMQP_REFUSED_FIX[1:]}") from None
    except ConfigError as exc:  # a Redis that refused the credentials, or no Redis
        if isinstance(exc.__cause__, REFUSED):
            raise ConfigError(f"the Celery broker at {redacted(broker_url)} refused its "
                              f"credentials ({exc.__cause__}): put the password in "
                              "FLOWKIT_BROKER_URL, as redis://:PASSWORD@host:port/db "
                              "(redis://USER:PASSWORD@... for an ACL user).") from None
        raise ConfigError(f"the Celery broker (FLOWKIT_BROKER_URL): {exc}") from None
    except (StoreUnavailable, kombu.exceptions.OperationalError, OSError):
        return [Finding("broker", WARNING, f"The Celery broker at {reached(broker_url)} does "
                        "not answer yet; the worker connects once it does.",
                        "Start it, or point FLOWKIT_BROKER_URL at it.")]
    return []


#: A URL scheme's default port, to compare two spellings of one broker.
_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}


def broker_address(url: str) -> str:
    """A broker URL as workers announce it and the doctor compares it: no credentials,
    ``localhost`` as 127.0.0.1, default port and database written out; each URL of a
    failover list (``;``-separated, as kombu takes them) alike."""
    if ";" in url:
        return ";".join(_address(one) for one in url.split(";"))
    return _address(url)


def _address(url: str) -> str:
    parts = urlsplit(url)
    scheme = "amqp" if parts.scheme == "pyamqp" else parts.scheme
    host = (parts.hostname or "").lower()
    host = "127.0.0.1" if host in ("localhost", "::1") else host
    try:
        port = parts.port or _PORTS.get(scheme, 0)
    except ValueError:  # a port that is not one: compared as written, without credentials
        return redacted(url)
    path = parts.path
    if scheme in ("redis", "rediss"):
        path = "/" + (path.strip("/") or "0")
    elif scheme == "amqp":  # the virtual host, as kombu reads it: /%2F and // are both "/"
        path = "/" + (unquote(path[1:]) if path not in ("", "/") else "/")
    return f"{scheme}://{host}:{port}{path}"


def same_broker(this_shell: str, workers: list[dict[str, Any]]) -> list[Finding]:
    """The live workers take messages from the broker this process sends to; else every
    run started from here waits, queued, until the reaper sends it again."""
    ours = broker_address(this_shell)
    elsewhere = {w["name"]: w["broker"] for w in workers if w.get("broker") not in (None, ours)}
    if not elsewhere or not workers:
        return []
    which = ", ".join(f"{name} ({theirs})" for name, theirs in sorted(elsewhere.items()))
    # another database or kind of broker is surely another; another host name or port may
    # be the same server seen from elsewhere (a compose service name, a mapped port)
    surely = all(_kind_and_db(theirs) != _kind_and_db(ours) for theirs in elsewhere.values())
    level = FAILURE if surely and len(elsewhere) == len(workers) else WARNING
    maybe = "" if surely else (" (unless those name the same server from where each "
                               "process runs)")
    return [Finding(
        "broker.same", level,
        f"This process sends steps to the broker at {ours}, but worker(s) {which} take "
        f"them from another{maybe}: runs started here wait, queued, until the reaper sends "
        "them again (FLOWKIT_QUEUED_TIMEOUT).",
        "Set FLOWKIT_BROKER_URL (or FLOWKIT_REDIS_URL, when the broker is the store's Redis) "
        "here as on the workers.")]


def _kind_and_db(address: str) -> tuple[str, str]:
    """An announced broker address's scheme and database (or vhost)."""
    parts = urlsplit(address.split(";")[0])
    return parts.scheme, parts.path


def worker_presence(workers: list[dict[str, Any]]) -> list[Finding]:
    if not workers:
        return [Finding("workers", FAILURE, "No live worker: nothing runs steps.",
                        "Start one: celery -A <your app> worker --queues <every queue your "
                        "workflows route to>.")]
    names = ", ".join(w["name"] for w in workers)
    return [Finding("workers", OK, f"{len(workers)} live worker(s): {names}.")]


def stuck_consumers(found: list[dict[str, Any]]) -> list[Finding]:
    """What the reaper last found of workers taking nothing (flowkit.engine.consumers)."""
    return [Finding("consumers", FAILURE, consumers.describe(problem),
                    f"Restart {problem['worker']} (its queued runs wait in its queue, not lost); "
                    "if it comes back, look at its broker connection.")
            for problem in found]


def beat(last: dict[str, float] | None, now: float) -> list[Finding]:
    """Beat alive: the reaper swept within three of its intervals (at least 30 s)."""
    if last is None:
        return [Finding("beat", FAILURE,
                        "No reaper sweep was ever recorded: beat is not running, or no worker "
                        "runs to take the sweeps it sends.",
                        "Run one beat process: celery -A <your app> beat.")]
    # two processes' clocks: a sweep a few ms "in the future" is one just now ("-0.0s ago")
    age, allowed = max(now - last["at"], 0.0), max(3 * float(last.get("interval") or 0), 30.0)
    if age > allowed:
        return [Finding("beat", FAILURE,
                        f"The reaper last swept {age:.0f}s ago (every {last['interval']:g}s "
                        "expected): crashed runs are not restarted, timers and schedules do "
                        "not fire.",
                        "Start beat (celery -A <your app> beat, one process) and a worker.")]
    return [Finding("beat", OK, f"The reaper swept {age:.1f}s ago.")]


def failing_schedules(errors: dict[str, dict[str, Any]]) -> list[Finding]:
    """Schedules whose last tick started no run (a workflow removed from the code, an input
    its schema refuses now): each tick fails the same way, and only a worker's log said so."""
    return [Finding("schedules", WARNING,
                    f"Schedule {schedule_id}'s last tick started no run: {error['error']}",
                    f"Fix what it names, or delete it: flowkit schedules delete {schedule_id}.")
            for schedule_id, error in sorted(errors.items())]


def queues(
    app_workflows: Iterable[Workflow] | None, default_queue: str, workers: list[dict[str, Any]]
) -> list[Finding]:
    """Every queue a workflow routes to (the app's, and those the workers announced) has a
    live consumer."""
    routed: dict[str, set[str]] = {
        queue: set(names) for queue, names in _routes(app_workflows or (), default_queue).items()}
    for w in workers:
        routes = w.get("routes") or {}
        for queue in routes:
            routed.setdefault(queue, set()).update(routes[queue] if isinstance(routes, dict) else ())
    if not workers or not routed:
        return []  # no worker: said above; no workflow known: nothing to check
    found = []
    for queue in unconsumed(set(routed), workers):
        names = sorted(routed[queue])
        what = f" (workflow {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" \
            if names else ""
        found.append(Finding(
            "queues", FAILURE,
            f"No live worker consumes queue {queue}{what}: its steps stay queued.",
            f"Start a worker with --queues {queue} (or add it to a worker's --queues)."))
    for wf in app_workflows or ():  # served here, and defined by no worker that takes it
        for queue in undefined_on(wf.name, wf.queues(default_queue), workers):
            found.append(Finding(
                "queues", FAILURE,
                f"No live worker of queue {queue} defines workflow {wf.name}: its steps are "
                "dropped as unknown tasks and its runs fail.",
                "Import its module in the workers' app (celery -A), or name it in "
                "FLOWKIT_WORKFLOW_MODULES for workers/celery_app.py."))
    if not found:
        found.append(Finding("queues", OK,
                             f"Every routed queue has a live consumer: {', '.join(sorted(routed))}."))
    return found


#: RabbitMQ's default ``consumer_timeout`` (since 3.8.17), in seconds.
RABBITMQ_CONSUMER_TIMEOUT = 1800.0


def broker_timeout(broker_url: str, workers: list[dict[str, Any]],
                   this_shell: int) -> list[Finding]:
    """How long the broker lets a step's message go unacknowledged, worded for the broker in
    use: Redis's visibility timeout, RabbitMQ's consumer timeout."""
    if is_amqp(broker_url):
        return consumer_timeout(_longest(workers))
    return visibility(workers, this_shell)


def _longest(workers: list[dict[str, Any]]) -> float:
    return max([s for s in [longest_step_seconds(), *(w.get("longest_step") for w in workers)]
                if s] or [0.0])


def consumer_timeout(longest: float) -> list[Finding]:
    """RabbitMQ closes a channel whose delivery outlives its ``consumer_timeout``; flowkit's
    workers reconnect and nothing runs twice, but each time they hand their prefetched
    messages back: worth raising the broker's timeout above the longest step."""
    if longest >= RABBITMQ_CONSUMER_TIMEOUT:
        return [Finding(
            "consumer-timeout", WARNING,
            f"A step may run {longest:g}s, longer than RabbitMQ's default consumer_timeout "
            f"({RABBITMQ_CONSUMER_TIMEOUT:g}s): unless the broker's is raised, RabbitMQ closes "
            "the worker's channel while the step runs. The worker reconnects, the step goes "
            "on and its redelivered message is dropped as a duplicate, but the reconnect "
            "hands every message the worker had prefetched back to the queue.",
            f"Set consumer_timeout = {int(longest + 60) * 1000} (milliseconds) in "
            "rabbitmq.conf on every broker node, or shorten the component's timeout.")]
    bound = f"the longest step may run {longest:g}s" if longest else "no component sets a timeout"
    return [Finding(
        "consumer-timeout", OK,
        f"RabbitMQ broker: {bound}, under RabbitMQ's default consumer_timeout "
        f"({RABBITMQ_CONSUMER_TIMEOUT:g}s; the broker's own setting cannot be read over AMQP: "
        "check rabbitmq.conf if it was lowered); a step that outlives it survives it (the "
        "worker reconnects; nothing runs twice).")]


def visibility(workers: list[dict[str, Any]], this_shell: int) -> list[Finding]:
    """The broker's visibility timeout of each worker outlasts the longest step; else Redis
    hands a step still running to a second worker."""
    longest = _longest(workers)
    if not longest:
        return [Finding("visibility-timeout", OK, "No component sets a timeout: nothing to "
                        "compare with the broker's visibility timeout.")]
    timeouts = {w["name"]: w["visibility_timeout"] for w in workers if w.get("visibility_timeout")}
    timeouts = timeouts or {"this shell's FLOWKIT_VISIBILITY_TIMEOUT": this_shell}
    short = {name: vt for name, vt in timeouts.items() if vt <= longest}
    if short:
        which = ", ".join(f"{name} ({vt}s)" for name, vt in sorted(short.items()))
        return [Finding(
            "visibility-timeout", FAILURE,
            f"A step may run {longest:g}s (timeout x attempts + backoff), longer than the "
            f"broker visibility timeout of {which}: Redis would hand it to a second worker.",
            f"Set FLOWKIT_VISIBILITY_TIMEOUT above {int(longest) + 1} on every worker, or "
            "shorten the component's timeout.")]
    return [Finding("visibility-timeout", OK,
                    f"The broker visibility timeout ({min(timeouts.values())}s) outlasts the "
                    f"longest step ({longest:g}s).")]


def versions(workers: list[dict[str, Any]]) -> list[Finding]:
    """Workers on one flowkit version, serving the same version of each workflow."""
    found = []
    flowkits: dict[str, list[str]] = {}
    for w in workers:
        flowkits.setdefault(str(w.get("flowkit") or "unknown"), []).append(w["name"])
    if len(flowkits) > 1:
        found.append(Finding(
            "versions", WARNING,
            "Workers run different flowkit versions: " + "; ".join(
                f"{v} on {', '.join(sorted(names))}" for v, names in sorted(flowkits.items())),
            "Finish the rolling deploy, or restart the workers left behind."))
    served_by: dict[str, dict[str, list[str]]] = {}
    for w in workers:
        for name, version in (w.get("workflows") or {}).items():
            served_by.setdefault(name, {}).setdefault(str(version), []).append(w["name"])
    for name, by_version in sorted(served_by.items()):
        if len(by_version) > 1:
            found.append(Finding(
                "versions", WARNING,
                f"Workflow {name} is served at versions " + "; ".join(
                    f"{v} by {', '.join(sorted(ns))}" for v, ns in sorted(by_version.items())),
                "Expected during a rolling deploy (each run stays on its version); otherwise "
                "deploy the same code to every worker."))
    if not found and workers:
        found.append(Finding("versions", OK, "Every worker runs flowkit "
                             f"{next(iter(flowkits))} and the same workflow versions."))
    return found


def _server(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a Redis URL; None for another broker (amqp://, ...)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        return None
    return parts.scheme, parts.hostname or parts.path, parts.port or 6379
