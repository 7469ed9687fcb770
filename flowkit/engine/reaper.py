"""The reaper: beat's task that makes every run reach a terminal state.

It restarts runs whose step lease lapsed (the worker died or froze), or that are stranded
(nothing in flight, nothing in their queues, no sign of life for two lapses: a worker took
their next message and died, a branch's worker died before the join counted it, the broker
refused the next message), re-drives runs stuck in ``queued`` (their message was lost, not
waiting in line: :func:`_lost`) or running with nothing in flight for too long, reports
workers whose consumer takes nothing from a queue where such runs wait
(:mod:`flowkit.engine.consumers`), and fails a run after FLOWKIT_MAX_RESTARTS restarts in a
row without progress. It also fires the timers that are due (a wait's timeout, a sleep's
end, a delayed start), and sends the resumes the broker could not take when they were
decided (:func:`~flowkit.engine.control.send_owed_resumes`). Every decision is an atomic claim in Redis (restart.lua,
fire_timer.lua), so two reapers never restart a run or fire a timer twice.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import get_settings
from ..errors import (
    FlowkitError,
    InvalidState,
    NotFound,
    StoreUnavailable,
    WorkflowNotFound,
)
from ..states import LIVE_STATES, RestartCause, RestartRefusal, RunState
from ..store import Store, get_store
from ..workflow import get_workflow
from . import admission, consumers, limits, notify, schedules
from .broker import queue_depths, retention_interval
from .control import (
    Run,
    cancel,
    default_queue,
    fire_due_timers,
    live_workers,
    resume,
    send_owed_resumes,
    start,
)

log = logging.getLogger(__name__)


def sweep(now: float | None = None) -> dict[str, list[str]]:
    """One pass; returns the run ids restarted and given up (and resumed, fired, ...), for
    logs and tests."""
    store, settings = get_store(), get_settings()
    now = time.time() if now is None else now
    report: dict[str, list[str]] = {"restarted": [], "gave_up": []}
    depths = QueueDepths()  # each queue asked about once a sweep, however many passes ask

    def restart(run_id: str, state: RunState, reason: str, cause: RestartCause, what: str,
                step: str = "", before: float = 0.0) -> None:
        gen, refusal = store.restart(
            run_id, expected_state=state, reason=reason, now=now, cause=cause, step=step,
            before=before, max_restarts=settings.max_restarts,
            # the store appends " during step <key>" when a step was in flight
            give_up_error={
                "type": "WorkerLost",
                "message": f"gave up after {settings.max_restarts} restarts; last: {what}",
                "attempts": [],
            },
        )
        if gen:
            try:
                resume(Run.load(run_id), gen)
            except Exception:  # one unknown workflow must not stop the sweep; queued_timeout re-drives it
                log.exception("flowkit reaper: restarted run %s but could not enqueue it", run_id)
            report["restarted"].append(run_id)
            log.warning("flowkit reaper: restarted run %s (%s)", run_id, reason)
        elif refusal == RestartRefusal.GAVE_UP:
            report["gave_up"].append(run_id)
            log.error("flowkit reaper: gave up run %s (%s)", run_id, reason)
            admission.released(run_id, store)
            notify.run_failed(run_id)

    def guarded(name: str, run_pass: Callable[[], Any], default: Any = None) -> Any:
        """One pass; one that fails (a record it cannot read) is said and the others go on:
        every sweep stopped there, and with it the timers, schedules, slots and the record
        of the sweep itself, for as long as the cause stayed."""
        try:
            return run_pass()
        except StoreUnavailable:
            raise  # Redis away: every pass would fail alike; the next sweep tries again
        except Exception:
            log.exception("flowkit reaper: its %s pass failed; the other passes go on", name)
            report.setdefault("failed", []).append(name)
            return default

    # first: a run whose resume the broker could not take is no stranded run to restart
    report["resumed"] = guarded("owed resumes", lambda: send_owed_resumes(store), [])
    guarded("restarts", lambda: _restarts(store, settings, now, depths, report, restart))
    report["timers"] = guarded("timers", lambda: fire_due_timers(now, store), [])
    report["scheduled"] = guarded("schedules", lambda: fire_schedules(now), [])
    # slots of runs that ended without giving them back
    report["admitted"] = guarded("admission", lambda: admission.reconcile(store), [])
    guarded("component slots", lambda: limits.reconcile(store))  # holders whose lease lapsed
    report["compacted"] = guarded("compaction", lambda: compact_ended(now), [])
    # the clock's time, not ``now`` (a test's): flowkit doctor asks whether beat is alive
    store.record_sweep(time.time(), settings.reaper_interval)
    return report


def _restarts(store: Store, settings: Any, now: float, depths: QueueDepths,
              report: dict[str, list[str]], restart: Callable[..., None]) -> None:
    """The passes that restart runs: lapsed leases, runs queued too long, stranded and
    stalled runs (each later one skips the runs an earlier one restarted)."""
    lapse = settings.heartbeat_lapse
    lost = f"worker lost (no heartbeat for {lapse:g}s)"
    for run_id, step in store.lapsed_leases(now):
        restart(run_id, RunState.RUNNING, f"{lost} during step {step}", RestartCause.LEASE_LAPSED,
                lost, step=step)
    limit = now - settings.queued_timeout
    queued = f"still queued after {settings.queued_timeout:g}s (message lost?)"
    lost, seen = _lost(store.queued_before(limit), store, depths)
    for run_id in lost:
        restart(run_id, RunState.QUEUED, queued, RestartCause.QUEUED_TOO_LONG, queued, before=limit)
    # runs waited that long in queues that hold messages: does a free worker ignore them?
    consumers.record(store, consumers.stuck(live_workers(store), seen, now,
                                            settings.queued_timeout) if any(seen.values()) else [])
    limit = now - lapse
    orphaned = "worker lost between steps (it stopped beating before sending the next one)"
    quiet = store.quiet_since(limit)
    for run_id in quiet:
        restart(run_id, RunState.RUNNING, orphaned, RestartCause.ORPHANED, orphaned, before=limit)
    stranded = (f"stranded: no step in flight and no message in its queues for {lapse:g}s "
                "(its next message, or a branch's part of a join, was lost with a worker or "
                "refused by the broker)")
    for run_id in _lost([r for r in quiet if r not in report["restarted"]], store, depths)[0]:
        restart(run_id, RunState.RUNNING, stranded, RestartCause.STRANDED, stranded,
                before=limit)
    unsent = (f"stranded: queued with no message in its queues for {lapse:g}s (a worker "
              "took it and was lost, or it was never sent)")
    waiting = [r for r in store.queued_before(limit) if r not in report["restarted"]]
    for run_id in _lost(waiting, store, depths)[0]:
        restart(run_id, RunState.QUEUED, unsent, RestartCause.STRANDED, unsent, before=limit)
    limit = now - settings.stall_timeout
    stalled = f"no step in flight for {settings.stall_timeout:g}s"
    # not its next step waiting in line
    for run_id in _lost(store.quiet_since(limit), store, depths)[0]:
        restart(run_id, RunState.RUNNING, stalled, RestartCause.STALLED, stalled, before=limit)


#: Runs compacted per shard and sweep at most (a backlog drains over a few sweeps).
COMPACT_BATCH = 8


class QueueDepths:
    """The depths of the broker's queues, each looked up once: a sweep's passes (queued too
    long, stranded running, stranded queued, stalled) mostly ask about the same queues, and
    each look-up is a broker connection and a passive declare per queue (on RabbitMQ, four
    connections a sweep on every sweeping worker). A depth read a few milliseconds earlier
    in the same sweep is as good: a stranded run must be seen so twice, a lapse apart."""

    def __init__(self) -> None:
        self.known: dict[str, int | None] = {}

    def of(self, queues: set[str]) -> dict[str, int | None]:
        """The depths of ``queues``; raises the broker's connection error as
        :func:`~flowkit.engine.broker.queue_depths` does (a later pass asks again)."""
        if missing := queues - self.known.keys():
            self.known.update(queue_depths(missing))
        return {queue: self.known[queue] for queue in queues}


def _lost(run_ids: list[str], store: Store, depths: QueueDepths | None = None
          ) -> tuple[list[str], dict[str, int | None]]:
    """Of the runs given (queued, or running with no step in flight, for a while: stranded,
    past FLOWKIT_QUEUED_TIMEOUT or FLOWKIT_STALL_TIMEOUT), those whose (next) message may be
    lost; and the depths of the queues they were looked for in.

    A run whose queues still hold messages waits in line (a backlog longer than the
    timeout): re-driving it would put a duplicate ahead of the line at every timeout, and
    fail it once it had been re-driven FLOWKIT_MAX_RESTARTS times. So a run is re-driven
    only once its queues are empty: its own, its workflow's, and those its messages were
    recorded going to (handoff). A message a worker took a moment ago and has not begun is in
    no queue: a run re-driven then gets one duplicate (begin_step runs it once), which is
    why a stranded run must be seen so twice."""
    if not run_ids:
        return [], {}
    default = default_queue()
    fields = store.runs_fields(run_ids, "workflow", "queue", "handoff_queues")
    routes = {run_id: _queues(workflow, queue or default) | set((sent or "").split())
              for run_id, (workflow, queue, sent) in zip(run_ids, fields, strict=True)}
    try:
        seen = (depths or QueueDepths()).of(set().union(*routes.values()))
    except Exception as exc:  # the broker does not answer: nothing could be re-driven now
        log.warning("flowkit reaper: cannot see the broker's queues (%s); queued runs wait", exc)
        return [], {}
    # a queue whose depth the broker would not say (None) may hold the run's message
    lost = [run_id for run_id, queues in routes.items() if all(seen[q] == 0 for q in queues)]
    return lost, seen


def _queues(workflow: str | None, own: str) -> set[str]:
    """The queues a queued run's messages go to: its own, and its workflow's."""
    try:
        return get_workflow(workflow).queues(own) | {own}
    except WorkflowNotFound:
        return {own}


def compact_ended(now: float | None = None) -> list[str]:
    """Compact the runs that ended more than FLOWKIT_COMPACT_AFTER_SECONDS ago (their
    events and trace into one archive, flowkit.store.archive); returns their ids."""
    store = get_store()
    before = (time.time() if now is None else now) - get_settings().compact_after_seconds
    return [run_id for run_id in store.ended_before(before, COMPACT_BATCH)
            if store.compact(run_id)]


def fire_schedules(now: float | None = None) -> list[str]:
    """Start the run of every schedule tick due by ``now``, and of every tick held back
    (``overlap="buffer"``) whose schedule's last run has ended; returns the run ids."""
    store = get_store()
    started: list[str] = []
    # held-back ticks first: a tick due in this sweep then finds their runs live
    for schedule_id, tick in store.buffered_ticks().items():
        try:
            run_id = _fire_buffered(store, schedule_id, tick)
        except StoreUnavailable as exc:  # still held back: the next sweep tries again
            log.warning("flowkit: schedule %s could not start its held-back tick: %s",
                        schedule_id, exc)
            continue
        if run_id:
            started.append(run_id)
    claimed_before = (time.time() if now is None else now) - UNSETTLED_SECONDS
    owed = _owed(store, claimed_before)
    claimed = schedules.claim_due(now, store)
    latest = _latest_to_cancel(claimed)
    for definition, tick in claimed:
        if (definition, tick) not in latest:  # an overlap="cancel" tick a later one replaced
            store.tick_settled(definition["id"], tick)
    for definition, tick in owed + latest:
        try:
            run_id = _fire_claimed(store, definition, tick)
        except StoreUnavailable as exc:  # still owed: a later sweep starts it
            log.error("flowkit: schedule %s could not start its tick of %s (a later sweep "
                      "tries again): %s", definition["id"], tick, exc)
            continue
        with contextlib.suppress(StoreUnavailable):  # still owed: started once, by its key
            store.tick_settled(definition["id"], tick)
        if run_id:
            started.append(run_id)
    return started


#: A tick claimed this long ago whose run is still owed was left by a sweep that died, or
#: whose start Redis refused: a later sweep starts it (by the tick's key: once).
UNSETTLED_SECONDS = 30.0


def _owed(store: Store, claimed_before: float) -> list[tuple[dict, float]]:
    """The unsettled ticks claimed before ``claimed_before`` still owed a run (the others
    are settled now): not of a schedule deleted or paused since (its ticks go with it), not
    started, and not followed by a later tick already claimed when the schedule's overlap
    policy reads its last run (started now, it would cancel, skip for or run before the
    later tick's run)."""
    owed = []
    for schedule_id, tick in store.unsettled_ticks(claimed_before):
        definition, next_at = store.schedule(schedule_id)
        if (definition is None or next_at is None
                or _tick_run(store, definition, tick) is not None
                or (definition.get("overlap", "allow") != "allow"
                    and next_at > schedules.next_tick(definition, tick) + 1e-3)):
            store.tick_settled(schedule_id, tick)
        else:
            owed.append((definition, tick))
    return owed


def _tick_run(store: Store, definition: dict, tick: float) -> str | None:
    """The run the schedule's ``tick`` started, if it did."""
    return store.run_of_key(definition["workflow"], schedules.idempotency_key(definition, tick))


def _fire_claimed(store: Store, definition: dict, tick: float) -> str | None:
    """Start the run of a tick this sweep claimed; under the schedule's firing lock when its
    ``overlap`` policy reads the last run."""
    if definition.get("overlap", "allow") == "allow":
        return _fire(store, definition, tick)
    with store.schedule_firing(definition["id"]) as held:
        if held:
            return _fire_by_policy(store, definition, tick)
    # another sweep is starting a run of it this moment: a live run, as the policy sees it
    if definition["overlap"] == "buffer":
        store.buffer_tick(definition["id"], tick)
    log.info("flowkit: schedule %s %s its tick of %s: another sweep is starting its run "
             "(overlap=%r)", definition["id"],
             "holds back" if definition["overlap"] == "buffer" else "skipped", tick,
             definition["overlap"])
    return None


def _fire_by_policy(store: Store, definition: dict, tick: float) -> str | None:
    """Start the tick's run as the schedule's ``overlap`` policy says, its last run read
    (the caller holds the schedule's firing lock from that read to the start)."""
    overlap = definition["overlap"]
    live = _live_run(store, definition["id"])
    if live is not None and live[0] == _tick_run(store, definition, tick):
        return live[0]  # this tick's own run: started by a sweep before (an owed tick)
    if live is not None:
        if overlap == "skip":
            log.info("flowkit: schedule %s skipped its tick of %s: its run %s is still %s "
                     "(overlap='skip')", definition["id"], tick, *live)
            return None
        if overlap == "buffer":
            store.buffer_tick(definition["id"], tick)
            log.info("flowkit: schedule %s holds its tick of %s back until its run %s "
                     "ends (overlap='buffer')", definition["id"], tick, live[0])
            return None
        _cancel_for(store, definition["id"], tick, live[0])  # overlap == "cancel"
    return _fire(store, definition, tick)


def _latest_to_cancel(claimed: list[tuple[dict, float]]) -> list[tuple[dict, float]]:
    """The claimed ticks, but of an ``overlap="cancel"`` schedule only its latest: a sweep
    late by several ticks started a run for each and cancelled each at once for the next."""
    latest = {d["id"]: tick for d, tick in claimed if d.get("overlap") == "cancel"}
    return [(d, tick) for d, tick in claimed
            if d.get("overlap") != "cancel" or tick == latest[d["id"]]]


def _fire(store: Store, definition: dict, tick: float) -> str | None:
    """Start the run of the schedule's ``tick``; None when it could not (said and kept)."""
    try:
        run = start(get_workflow(definition["workflow"]), definition.get("input"),
                    idempotency_key=schedules.idempotency_key(definition, tick), store=store)
    except StoreUnavailable:  # not the schedule's fault: its tick stays owed
        raise
    except FlowkitError as exc:  # one broken schedule must not stop the sweep
        schedules.tick_failed(store, definition["id"], tick, exc)
        return None
    except Exception:  # not flowkit's own error: its traceback says where
        log.exception("flowkit: schedule %s could not start its run", definition["id"])
        return None
    with contextlib.suppress(FlowkitError):
        store.schedule_fired(definition["id"], None)
        store.schedule_started(definition["id"], run.id)
    return run.id


def _fire_buffered(store: Store, schedule_id: str, tick: float) -> str | None:
    """Start the run of a tick the schedule held back, once its last run has ended; a
    paused or deleted schedule's is dropped."""
    definition, next_at = store.schedule(schedule_id)
    if definition is None or next_at is None:
        store.drop_buffered(schedule_id)
        return None
    if _live_run(store, schedule_id) is not None:  # the common case, read without the lock
        return None
    with store.schedule_firing(schedule_id) as held:  # not held: the next sweep tries again
        if (not held or _live_run(store, schedule_id) is not None
                or not store.take_buffered(schedule_id, tick)):
            return None
        return _fire(store, definition, tick)


def _live_run(store: Store, schedule_id: str) -> tuple[str, str] | None:
    """The schedule's last run and its state, if that run is live (queued, held, running,
    waiting): what an ``overlap`` policy other than "allow" acts on."""
    last = store.last_schedule_run(schedule_id)
    if last is None or last[1] is None or last[1] not in LIVE_STATES:
        return None
    return last[0], last[1]


def _cancel_for(store: Store, schedule_id: str, tick: float, run_id: str) -> None:
    """Cancel the schedule's live last run, for its tick's run (``overlap="cancel"``)."""
    try:
        cancel(run_id, store, reason=f"schedule {schedule_id}: its tick of {tick:.3f} started "
                                     "a run in its place (overlap='cancel')")
    except (InvalidState, NotFound):  # it ended, or expired, meanwhile: nothing to cancel
        return
    log.info("flowkit: schedule %s cancelled its run %s for its tick of %s "
             "(overlap='cancel')", schedule_id, run_id, tick)




def trim_indexes(now: float | None = None) -> int:
    """Beat's retention task: drop ids of runs past their retention from the run indexes,
    keep the event waits of runs still waiting indexed (:meth:`Store.keep_wakers`), and
    the idempotency claims of runs as long as the runs (:meth:`Store.keep_claims`)."""
    store, settings = get_store(), get_settings()
    now, retention = time.time() if now is None else now, settings.retention_seconds
    # kept past the next passes even when the retention is shorter than two of them
    ahead = 2 * retention_interval(settings)
    store.keep_wakers(max(retention, ahead))
    store.keep_claims(now, max(retention, ahead), ahead=ahead)
    return store.trim_indexes(now - retention)
