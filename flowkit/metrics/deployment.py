"""The deployment's metrics, read from Redis and the broker at each scrape.

No process sees the whole deployment: runs are started by the web process, beat and the
CLI, ended by workers, the reaper and cancels. So these numbers are kept where every
process writes, Redis: the run scripts count runs started, ended (by state) and restarted
(by reason) in per-shard hashes, and the store's run indexes say how many runs are
queued, running and waiting. The broker says how many messages wait in each queue. A
scrape costs a few pipelined Redis reads and one passive declare per queue.

A Redis or broker outage does not fail the scrape: ``flowkit_redis_up`` or
``flowkit_broker_up`` says 0, and the numbers that could not be read are left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..config import get_settings
from ..engine import broker, control
from ..errors import StoreUnavailable
from ..store import Store, get_store
from ..workflow import Workflow, workflows

log = logging.getLogger(__name__)

#: Longest-queued runs read per shard for the oldest age per queue (16 shards: 8,000).
OLDEST_PER_SHARD = 500


def _all_workflows() -> list[Workflow]:
    return list(workflows().values())


def _scrape_store() -> Store:
    # a scrape must answer within Prometheus's timeout: give up on Redis as the API does
    return get_store(retry_seconds=get_settings().api_redis_retry_seconds)


class DeploymentCollector(Collector):
    """``store``: the store to read (default: this process's, with the API's short retry
    budget); ``served``: the workflows whose queues to report (default: every one
    registered here; the queues live workers consume are reported too)."""

    def __init__(self, store: Callable[[], Store] | None = None,
                 served: Callable[[], Iterable[Workflow]] | None = None) -> None:
        self.store = store or _scrape_store
        self.served = served or _all_workflows

    def collect(self) -> Iterator[Metric]:
        try:
            store = self.store()
            counts = store.metric_counts()
            states = store.run_counts()
            oldest, complete = store.oldest_queued(OLDEST_PER_SHARD)
            workers = control.live_workers(store)
        except StoreUnavailable as exc:
            log.warning("flowkit metrics: Redis unreachable: %s", exc)
            yield _up("redis", "flowkit's Redis", False)
            return
        yield _up("redis", "flowkit's Redis", True)
        yield from _counters(counts)
        active = GaugeMetricFamily(
            "flowkit_runs_active", "Runs queued (for a worker), running and waiting (for "
            "input, an event or a timer) now.", labels=["state"])
        for state in ("queued", "running", "waiting"):
            active.add_metric([state], states.get(state, 0))
        yield active
        yield from self._queues(oldest, complete, workers)

    def _queues(self, oldest: list[tuple[str, float, str]], complete: bool,
                workers: list[dict]) -> Iterator[Metric]:
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
        yield age
        yield consumers
        try:
            depths = broker.queue_depths(sorted(queues))
        except Exception as exc:  # kombu's and the transports' errors have no common base
            log.warning("flowkit metrics: the broker did not answer: %s", exc)
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
