"""Consumers that take nothing: a worker that beats, announces a queue, has a free slot, and
takes no message from that queue while messages wait in it.

A worker's heartbeat is a thread of its own: it goes on saying the worker is alive when the
consumer is stuck (a broker channel that hangs, ``celery control cancel_consumer``, a bug),
and /healthz said ``ok`` while runs sat in the queue. The reaper does not re-drive those
runs (their messages are in the queue, not lost), so nothing else would tell.

Each worker node sends its load with its heartbeat (:mod:`flowkit.worker.load`): how many
messages it holds (running, or reserved for a slot), when its consumer last received one,
and when it last had no free slot. When runs have been queued past FLOWKIT_QUEUED_TIMEOUT
while their queues hold messages, the reaper asks :func:`stuck` which workers consuming
those queues had a free slot and took nothing for that long, and records them;
``/healthz`` reports them as problems and the reaper logs them. A healthy worker with a free
slot takes a waiting message within moments (prefetch is 1 per slot), so the timeout
leaves no room for a false alarm from a worker that is merely busy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..config import get_settings
from ..store import Store

log = logging.getLogger(__name__)


def stuck(workers: Iterable[dict[str, Any]], depths: dict[str, int], now: float,
          quiet_for: float) -> list[dict[str, Any]]:
    """The workers (as ``control.live_workers`` lists them) that consume a queue holding
    messages (``depths``), have a free slot, are not draining, and took no message for
    ``quiet_for`` seconds, each ``{worker, queues: {queue: depth}, free, quiet}``. A worker
    that sends no load (an older flowkit) is never reported."""
    found = []
    for worker in workers:
        slots, held = worker.get("concurrency"), worker.get("held")
        if not slots or held is None or held >= slots or worker.get("draining"):
            continue
        quiet = now - max(worker.get("received_at", now), worker.get("saturated_at", now))
        waiting = {q: depths[q] for q in worker.get("queues", ()) if depths.get(q)}
        if quiet >= quiet_for and waiting:
            found.append({"worker": worker["name"], "queues": waiting, "free": slots - held,
                          "quiet": round(quiet, 1)})
    return found


def describe(problem: dict[str, Any]) -> str:
    """One stuck consumer, said for people: what is wrong and what to do."""
    queues = ", ".join(f"{q} ({n} waiting)" for q, n in sorted(problem["queues"].items()))
    return (f"worker {problem['worker']} has {problem['free']} free slot(s) but took no message "
            f"for {problem['quiet']:g}s while its queue holds messages: {queues}; its consumer "
            f"is stuck: restart the worker")


def record(store: Store, found: list[dict[str, Any]]) -> None:
    """Keep what the reaper found for /healthz (a few sweeps long: it is found again while
    it lasts), and log each new finding."""
    settings = get_settings()
    known = {p["worker"] for p in store.stuck_consumers()} if found else set()
    for problem in found:
        if problem["worker"] not in known:
            log.error("flowkit reaper: %s", describe(problem))
    store.record_stuck_consumers(found, ttl=max(30.0, 10 * settings.reaper_interval))


def reported(store: Store) -> list[str]:
    """The stuck consumers the reaper last found, said for people."""
    return [describe(p) for p in store.stuck_consumers()]
