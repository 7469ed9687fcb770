"""Slots of concurrency keys and component limits when a process dies, or freezes, between
two of its Redis calls: no run waits for good, and no slot is given back twice.

The runs here are on a queue no worker consumes: each step is begun, and its limits
entered and left, by this test with the engine's own calls, at the moment a process
would have died; beat's sweep (``reconcile``) then has to repair what it left.
"""

from __future__ import annotations

import time
import uuid

import pytest

import flowkit
from flowkit import component
from flowkit.engine import admission, limits
from flowkit.engine.step import StepContext
from flowkit.errors import StepSuspended
from flowkit.states import RestartCause, RunState

NOWHERE = "no-worker-consumes-this"
STEP = "0:t.crash_slot"


@component(name="t.crash_slot")
def crash_slot(data: dict) -> dict:
    return data


@component(name="t.crash_tenant_step")
def crash_tenant_step(data: dict) -> dict:
    return data


LIMITED = crash_slot.concurrency(1, key="k")
slotted = flowkit.Workflow("t.crash_slots", [LIMITED], queue=NOWHERE)
tenanted = flowkit.Workflow("t.crash_tenants", [crash_tenant_step], queue=NOWHERE,
                            concurrency=flowkit.Concurrency(limit=1, key="tenant"))


def begun(store, run: flowkit.Run) -> StepContext:
    """The run's step begun as a worker begins it: its lease taken, under a new token."""
    gen = int(store.run_fields(run.id, "gen")[0])
    token = uuid.uuid4().hex
    begin = store.begin_step(run.id, STEP, gen, token, "test-worker", time.time(),
                             crash_slot.name)
    return StepContext(run.id, STEP, gen, begin.attempt, token, crash_slot.name, store)


def enter(ctx: StepContext) -> limits.Held:
    return limits.enter(ctx, LIMITED.policy, {"k": "x"})


def test_a_superseded_attempt_leaves_the_slot_and_the_line_of_the_attempt_that_replaced_it(
        store):
    """A frozen worker's attempt, restarted by the reaper, ended after the new attempt took
    the step's slot over: it gave that slot back, so a step ran beside the new attempt (or,
    in line, the new attempt lost its place and waited for good)."""
    first = slotted.start({"k": "x"})
    held = enter(old := begun(store, first))
    # the reaper, once the frozen worker's lease has lapsed
    gen, _ = store.restart(first.id, expected_state=RunState.RUNNING, reason="lapsed",
                           now=time.time() + 60, cause=RestartCause.LEASE_LAPSED, step=STEP,
                           max_restarts=5)
    assert gen == old.gen + 1
    assert enter(begun(store, first)) == held  # the new attempt holds the step's slot
    second = slotted.start({"k": "x"})
    with pytest.raises(StepSuspended):
        enter(begun(store, second))  # in line behind it
    limits.leave(store, held, owner=(old.gen, old.token))  # the old attempt ends
    assert [member for member, _ in store.slot_holders(held.group)] == [held.member]
    assert store.in_line(held.group) == 1
    assert flowkit.get_run(second.id).state == "waiting"


def test_a_slot_handed_over_by_a_process_that_died_before_answering_resumes_its_step(store):
    """The slot moved to the next in line (slots.lua), then its wait was to be answered
    (deliver): a process dying between the two left that step waiting for good, and its
    reserved slot, once lapsed, was given to the steps behind it."""
    first, second = slotted.start({"k": "x"}), slotted.start({"k": "x"})
    held = enter(begun(store, first))
    with pytest.raises(StepSuspended):
        enter(begun(store, second))
    # the hand-over up to the process's death; its reservation lapsed since (60 s later)
    now = time.time()
    _, _, handed = store.slots(held.group, held.limit, now, release=held.member, score=now - 1)
    assert handed == [f"{second.id} {STEP}"]
    assert flowkit.get_run(second.id).state == "waiting"
    assert limits.reconcile(store) == 1  # beat's sweep
    assert flowkit.get_run(second.id).state == "queued"  # resumed: it asks for a slot again
    resumed = [e for e in second.events() if e.type == "run.resumed"]
    assert [(e.data["by"], e.data["step"]) for e in resumed] == [("slot", STEP)]


def test_a_run_given_a_slot_but_still_held_when_its_admitter_died_is_admitted_by_the_sweep(
        store):
    """A run's end hands its key's slot to the next run (slots.lua), which is then admitted
    and enqueued (admit.lua): a process dying between the two left that run queued and
    held for good, and every run of the key behind it."""
    first = tenanted.start({"tenant": "acme"})
    second = tenanted.start({"tenant": "acme"})
    group = store.run_fields(second.id, "concurrency_group")[0]
    assert flowkit.get_run(second.id).held_for == "1 of 1 runs of acme active"
    _, _, handed = store.slots(group, 1, time.time(), release=first.id)  # first's end
    assert handed == [second.id]
    assert flowkit.get_run(second.id).held_for  # given the slot, still held
    assert admission.reconcile(store) == [second.id]
    record = flowkit.get_run(second.id)
    assert record.state == "queued" and not record.held_for
    assert [e.type for e in second.events()][-1] == "run.admitted"
