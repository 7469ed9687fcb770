"""The reaper: beat's task that makes every run reach a terminal state.

It restarts runs whose step lease lapsed (the worker died or froze), re-drives
runs stuck in ``queued`` (their message was lost) or running with nothing in
flight for too long, and fails a run after FLOWKIT_MAX_RESTARTS restarts. Every
decision is an atomic claim in Redis, so two reapers never restart a run twice.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task

from .config import get_settings
from .run import QUEUED, RUNNING, Run, send_resume
from .store import get_store

log = logging.getLogger(__name__)
BATCH = 500


def sweep(now: float | None = None) -> dict[str, list[str]]:
    """One pass; returns the run ids restarted and given up, for logs and tests."""
    store, settings = get_store(), get_settings()
    now = time.time() if now is None else now
    report: dict[str, list[str]] = {"restarted": [], "gave_up": []}

    def restart(run_id: str, state: str, reason: str, condition: str, cause: str) -> None:
        gen, why = store.restart(
            run_id,
            expected_state=state,
            reason=reason,
            now=now,
            max_restarts=settings.max_restarts,
            condition=condition,
            # the store appends " during step <key>" when a step was in flight
            give_up_error={
                "type": "WorkerLost",
                "message": f"gave up after {settings.max_restarts} restarts; last: {cause}",
                "attempts": [],
            },
        )
        if gen:
            try:
                resume(run_id, gen)
            except Exception:  # one unknown workflow must not stop the sweep; queued_timeout re-drives it
                log.exception("flowkit reaper: restarted run %s but could not enqueue it", run_id)
            report["restarted"].append(run_id)
            log.warning("flowkit reaper: restarted run %s (%s)", run_id, reason)
        elif why == "gave_up":
            report["gave_up"].append(run_id)
            log.error("flowkit reaper: gave up run %s (%s)", run_id, reason)
            _notify(run_id)

    lapse = settings.heartbeat_lapse
    lost = f"worker lost (no heartbeat for {lapse:g}s)"
    for lease in store.redis.zrangebyscore(store.keys.leases, "-inf", now, start=0, num=BATCH):
        run_id, _, step = lease.partition(" ")
        restart(run_id, RUNNING, f"{lost} during step {step}", f"lease:{step}", lost)
    limit = now - settings.queued_timeout
    queued = f"still queued after {settings.queued_timeout:g}s (message lost?)"
    for run_id in store.redis.zrangebyscore(store.keys.queued, "-inf", limit, start=0, num=BATCH):
        restart(run_id, QUEUED, queued, f"queued:{limit}", queued)
    limit = now - lapse
    orphaned = "worker lost between steps (it stopped beating before sending the next one)"
    for run_id in store.redis.zrangebyscore(store.keys.running, "-inf", limit, start=0, num=BATCH):
        restart(run_id, RUNNING, orphaned, f"orphaned:{limit}", orphaned)
    limit = now - settings.stall_timeout
    stalled = f"no step in flight for {settings.stall_timeout:g}s"
    for run_id in store.redis.zrangebyscore(store.keys.running, "-inf", limit, start=0, num=BATCH):
        restart(run_id, RUNNING, stalled, f"stalled:{limit}", stalled)
    return report


def resume(run_id: str, gen: int) -> None:
    """Have generation ``gen`` of a run's canvas enqueued by a worker of its own queue
    (checkpointed steps return their stored output)."""
    send_resume(Run.load(run_id), gen)


def _notify(run_id: str) -> None:
    from . import notify

    notify.run_failed(run_id)


def trim_indexes(now: float | None = None) -> int:
    """Drop ids of runs past their retention from the run indexes."""
    store, settings = get_store(), get_settings()
    cutoff = (time.time() if now is None else now) - settings.retention_seconds
    removed = store.redis.zremrangebyscore(store.keys.runs, "-inf", cutoff)
    for key in store.redis.scan_iter(match=store.keys.runs_of("*"), count=200):
        removed += store.redis.zremrangebyscore(key, "-inf", cutoff)
    store.redis.zremrangebyscore(store.keys.workers, "-inf", cutoff)
    return removed


@shared_task(name="flowkit.reaper", ignore_result=True)
def reaper_task() -> dict[str, list[str]]:
    return sweep()


@shared_task(name="flowkit.retention", ignore_result=True)
def retention_task() -> int:
    return trim_indexes()
