"""Admission: at most ``limit`` active runs per concurrency key; the rest wait in Redis.

A workflow with ``concurrency=flowkit.Concurrency(limit, key)`` groups its runs by key
(``<workflow>:<key>``). A run that finds a free slot is enqueued as usual; one that does
not is *held*: ``queued``, with ``held_for`` saying what it waits for ("2 of 2 runs of
tenant acme active") and a ``run.held`` event, in the group's line in Redis, never in the
broker. When a run ends, however it ends, its slot goes to the next in line (higher
priority first, then older), which is admitted (``run.admitted``) and enqueued, once no
step of it still runs: a cancel is seen at the step's next check, and a parallel branch
runs on after another failed the run; its slot given back at the end, the next run of the
key worked beside it (a tenant limited to one job had two). The step's own stop gives it
back then (its lease let go), or beat's sweep once its lease lapsed. Keys are
independent: a tenant with 300 runs in line holds ``limit`` slots, and another tenant's
run is admitted at once.

A slot is never leaked: whoever ends a run gives its slot back, and beat's sweep
(:func:`reconcile`) gives back the slots of runs that ended, or never came to exist,
without it (a process that died at the wrong moment), admits a run given a slot but still
held (its admitter died in between), and fills free slots. A waiting run
(paused for input, an event, a timer) keeps its slot: it holds no worker, but resuming it
never waits behind newer runs.
"""

from __future__ import annotations

import logging
import time

from .. import events
from ..states import TERMINAL_STATES, RunState
from ..store import Ended, Store, get_store
from ..workflow import workflows
from .dispatch import send_resume

log = logging.getLogger(__name__)
#: A slot held by a run that does not exist is given back after this long (its start may
#: still be creating it).
ORPHAN_SLOT_SECONDS = 60.0


def place_in_line(priority: int, now: float) -> float:
    """Lower is sooner: higher priority first, then the order runs came in."""
    return now - priority * 1e9


def request(run_id: str, group: str, limit: int, priority: int, store: Store) -> bool:
    """Ask for a slot for a new run (stored already); True when it may be enqueued now, else
    it is held (and admitted later by whoever frees a slot)."""
    now = time.time()
    holds, active, admitted = store.slots(group, limit, now, add=run_id,
                                          order=place_in_line(priority, now))
    _continue(admitted, exclude=run_id, store=store)
    if holds:
        return True
    key = group.partition(":")[2] or "(no owner)"
    reason = f"{active} of {limit} runs of {key} active"
    store.hold(run_id, reason, now, events.make(events.RUN_HELD, run_id, reason=reason))
    # asked again: a slot may have freed, and been handed to this run, while it was held
    holds, _, admitted = store.slots(group, limit, time.time(), add=run_id,
                                     order=place_in_line(priority, now))
    _continue(admitted, exclude=run_id, store=store)
    return holds and store.admit(run_id, time.time(), events.make(events.RUN_ADMITTED, run_id))


def released(run_id: str, store: Store | None = None, ended: Ended | None = None) -> None:
    """The run ended: its slot (if it has one) goes to the next in line. ``ended``: what
    the script that ended it answered, which names the slot (else the run is read)."""
    store = store or get_store()
    if ended is not None:
        group, limit = ended.slot or (None, None)
    else:
        group, limit = store.run_fields(run_id, "concurrency_group", "concurrency_limit")
    if not group or not limit or _still_runs(run_id, store, time.time()):
        return
    limit = limit_in_code(group) or int(limit)  # a deploy may have changed it since its start
    _, _, admitted = store.slots(group, limit, time.time(), release=run_id)
    _continue(admitted, store=store)


def reconcile(store: Store | None = None) -> list[str]:
    """Give back the slots of runs that ended (or never were) and fill free slots; returns
    the runs admitted. Beat's sweep runs it."""
    store, now = store or get_store(), time.time()
    admitted_all: list[str] = []
    for group, stored in store.groups().items():
        limit = limit_in_code(group) or stored  # raised or lowered by a deploy since
        if limit != stored:
            store.set_group_limit(group, limit)
        holders = store.slot_holders(group)
        if not holders and store.drop_idle_group(group, limit):
            continue  # no slot held, none asked for: out of the index until one is
        states = store.run_states([run_id for run_id, _ in holders])
        gone = [run_id for (run_id, since), state in zip(holders, states, strict=True)
                if (state is None and now - since > ORPHAN_SLOT_SECONDS)
                or (state is not None and RunState(state) in TERMINAL_STATES
                    and not _still_runs(run_id, store, now))]
        for run_id in gone or [""]:
            _, _, admitted = store.slots(group, limit, now, release=run_id)
            admitted_all += _continue(admitted, store=store)
        # given a slot, but still held: the process admitting it died between the two
        # (its run would wait for good, the key's line behind it)
        admitted_all += _continue([run_id for (run_id, _), state in
                                   zip(holders, states, strict=True)
                                   if state == RunState.QUEUED], store=store)
    return admitted_all


def _still_runs(run_id: str, store: Store, now: float) -> bool:
    """Whether a step of the (ended) run still runs: its lease is held and beaten."""
    return bool(store.live_leases(run_id, now))


def limit_in_code(group: str) -> int | None:
    """The limit this process's code gives ``group``'s workflow (None where it does not
    know the workflow): after a deploy raised or lowered it, runs started before keep
    their start's limit in their record, and the line would go on at the old one."""
    wf = workflows().get(group.partition(":")[0])
    return wf.concurrency.limit if wf is not None and wf.concurrency is not None else None


def _continue(admitted: list[str], store: Store, exclude: str = "") -> list[str]:
    """Enqueue the runs just admitted (a run not stored yet, or not held, is its own
    start's to enqueue)."""
    done = []
    for run_id in admitted:
        if run_id == exclude:
            continue
        if store.admit(run_id, time.time(), events.make(events.RUN_ADMITTED, run_id)):
            gen, queue = store.run_fields(run_id, "gen", "queue")
            send_resume(run_id, int(gen or 0), queue or None)
            done.append(run_id)
    return done
