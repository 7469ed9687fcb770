"""The deployment's metrics, read from Redis and the broker at each scrape.

No process sees the whole deployment: runs are started by the web process, beat and the
CLI, ended by workers, the reaper and cancels. So these numbers are kept where every
process writes, Redis: the run scripts count runs started, ended (by state) and restarted
(by reason) in per-shard hashes, and the store's run indexes say how many runs are
queued, running and waiting. The broker says how many messages wait in each queue. A
scrape costs a few pipelined Redis reads and one passive declare per queue.

A Redis or broker outage does not fail the scrape: ``flowkit_redis_up`` or
``flowkit_broker_up`` says 0, and the numbers that could not be read are left out. Nor
does a server that takes connections and never answers (frozen): the reads run in a small
pool of threads, each within its share of METRICS_SCRAPE_SECONDS, and with short socket
timeouts, so a scrape answers in time and its stuck reads end soon after (they held a web
thread and a broker connection each, for good). The broker is asked about the served
workflows' queues while Redis is away.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..config import get_settings
from ..defaults import METRICS_SCRAPE_SECONDS
from ..engine import broker, control
from ..errors import StoreUnavailable
from ..locks import ForkSafeLock
from ..store import Store
from ..workflow import Workflow, workflows

log = logging.getLogger(__name__)

#: Longest-queued runs read per shard for the oldest age per queue (16 shards: 8,000).
OLDEST_PER_SHARD = 500


def _all_workflows() -> list[Workflow]:
    return list(workflows().values())


_scrape_stores: dict[tuple, Store] = {}
_pools: dict[tuple[int, str], ThreadPoolExecutor] = {}
_lock = ForkSafeLock()


def _scrape_store() -> Store:
    """A store whose commands are sent once (a scrape 15 s later asks again) and wait a share
    of a scrape's budget for an answer (the process's wait FLOWKIT_REDIS_SOCKET_TIMEOUT, 60 s,
    and its resends within the retry budget, each behind a health check, held one read of a
    frozen Redis about a minute)."""
    settings = get_settings()
    with _lock:
        made = _scrape_stores.get((os.getpid(), settings))
        if made is None:
            _scrape_stores.clear()
            made = _scrape_stores[(os.getpid(), settings)] = Store(settings.replace(
                redis_retry_seconds=0.0,
                redis_socket_timeout=min(settings.redis_socket_timeout,
                                         METRICS_SCRAPE_SECONDS / 4)))
        return made


def _pool(source: str) -> ThreadPoolExecutor:
    """The threads reading ``source`` ("redis", "broker") for scrapes: two each (reads stuck
    on a frozen server wait there, and later scrapes' reads wait behind them, said as down,
    rather than take more). One pool for both let a frozen Redis's stuck reads hold every
    thread, and an answering broker was said to be down."""
    with _lock:
        pool = _pools.get((os.getpid(), source))  # a forked child has none of its parent's
        if pool is None:
            for old in [key for key in _pools if key[0] != os.getpid()]:
                del _pools[old]
            pool = _pools[(os.getpid(), source)] = ThreadPoolExecutor(
                max_workers=2, thread_name_prefix=f"flowkit-scrape-{source}")
        return pool


class DeploymentCollector(Collector):
    """``store``: the store to read (default: this process's, with the API's short retry
    budget); ``served``: the workflows whose queues to report (default: every one
    registered here; the queues live workers consume are reported too); ``depths``: the
    broker's queue depths (default: :func:`flowkit.engine.broker.queue_depths`)."""

    def __init__(self, store: Callable[[], Store] | None = None,
                 served: Callable[[], Iterable[Workflow]] | None = None,
                 depths: Callable[[list[str]], dict[str, int | None]] | None = None) -> None:
        self.store = store or _scrape_store
        self.served = served or _all_workflows
        self.depths = depths or broker.queue_depths

    def _read_store(self) -> tuple:
        store = self.store()
        return (store.metric_counts(), store.run_counts(),
                store.oldest_queued(OLDEST_PER_SHARD), control.live_workers(store))

    def collect(self) -> Iterator[Metric]:
        deadline = time.monotonic() + METRICS_SCRAPE_SECONDS
        try:
            counts, states, (oldest, complete), workers = _pool("redis").submit(
                self._read_store).result(timeout=METRICS_SCRAPE_SECONDS / 2)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("flowkit metrics: Redis unreachable: %s",
                        str(exc) or "no answer within the scrape's share")
            yield _up("redis", "flowkit's Redis", False)
            yield from self._queues(None, deadline)  # the broker may answer
            return
        yield _up("redis", "flowkit's Redis", True)
        yield from _counters(counts)
        active = GaugeMetricFamily(
            "flowkit_runs_active", "Runs queued (for a worker), running and waiting (for "
            "input, an event or a timer) now.", labels=["state"])
        for state in ("queued", "running", "waiting"):
            active.add_metric([state], states.get(state, 0))
        yield active
        yield from self._queues((oldest, complete, workers), deadline)

    def _queues(self, read: tuple[list[tuple[str, float, str]], bool, list[dict]] | None,
                deadline: float) -> Iterator[Metric]:
        """Each queue's age, consumers and depth; without ``read`` (Redis did not answer),
        the served workflows' queues' depths only."""
        oldest, complete, workers = read or ([], False, [])
        default = control.default_queue()
        queues: set[str] = set()
        for wf in self.served():
            queues |= wf.queues(default)
        for w in workers:
            queues |= set(w.get("queues") or ()) | set(w.get("routes") or ())
        since: dict[str, float] = {}
        for _, at, queue in oldest:
            queue = queue or default
            queues.add(queue)
            since[queue] = min(at, since.get(queue, at))
        now = time.time()
        age = GaugeMetricFamily(
            "flowkit_queue_oldest_run_age_seconds",
            "Seconds the longest-queued run of each queue (the run's queue) has waited for "
            "a worker; 0 when none waits.", labels=["queue"])
        consumers = GaugeMetricFamily(
            "flowkit_queue_consumers", "Live worker nodes consuming each queue (a draining "
            "one, or one whose consumer `flowkit drain` cancelled, does not).",
            labels=["queue"])
        for queue in sorted(queues):
            if queue in since:
                age.add_metric([queue], max(0.0, now - since[queue]))
            elif complete:  # else one may wait behind the runs read: say nothing
                age.add_metric([queue], 0.0)
            consumers.add_metric([queue], sum(queue in control.consumes(w) for w in workers))
        if read is not None:
            yield age
            yield consumers
        try:
            depths = _pool("broker").submit(self.depths, sorted(queues)).result(
                timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # kombu's and the transports' errors have no common base
            log.warning("flowkit metrics: the broker did not answer: %s",
                        str(exc) or "no answer within the scrape's share")
            yield _up("broker", "the broker", False)
            return
        yield _up("broker", "the broker", True)
        depth = GaugeMetricFamily(
            "flowkit_queue_depth", "Messages waiting in each broker queue (steps, resumes "
            "and reaper sweeps not yet taken by a worker).", labels=["queue"])
        for queue, n in depths.items():
            if n is not None:  # the broker refused to say (an error reply): no figure
                depth.add_metric([queue], n)
        yield depth


def _up(name: str, what: str, answered: bool) -> Metric:
    up = GaugeMetricFamily(f"flowkit_{name}_up", f"1 when {what} answered this scrape.")
    up.add_metric([], 1 if answered else 0)
    return up


def _counters(counts: dict[str, int]) -> Iterator[Metric]:
    started = CounterMetricFamily(
        "flowkit_runs_started", "Runs started (created by the API, Python, the CLI or a "
        "schedule; a delayed start counts when it is made), by workflow.", labels=["workflow"])
    ended = CounterMetricFamily(
        "flowkit_runs_ended", "Runs that reached a terminal state, by workflow and state "
        "(succeeded, failed, cancelled); a retried run counts again when it ends again.",
        labels=["workflow", "state"])
    restarts = CounterMetricFamily(
        "flowkit_run_restarts", "Runs restarted from their checkpoints, by reason "
        "(lease_lapsed: a worker died, froze or drained during a step; orphaned: lost "
        "between steps; stranded: nothing in flight and nothing in its queues, its next "
        "message or join lost; queued_too_long: its message was lost; stalled; requested: "
        "a retry).", labels=["reason"])
    for name, n in sorted(counts.items()):
        kind, _, rest = name.partition("|")
        if kind == "started":
            started.add_metric([rest], n)
        elif kind == "ended":
            state, _, workflow = rest.partition("|")
            ended.add_metric([workflow, state], n)
        elif kind == "restarts":
            restarts.add_metric([rest], n)
    yield started
    yield ended
    yield restarts
