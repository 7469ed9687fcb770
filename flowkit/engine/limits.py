"""A component's fleet-wide limits: ``.concurrency(limit, key)`` and ``.rate_limit(rate, key)``.

Both are checked by the executor before a step's first attempt (a cached output needs
neither), and a step over a limit holds no worker while it waits:

- **Concurrency**: the step takes a slot of the group ``step:<component>:<key>``
  (``store.slots``, the script run admission uses). Its slot is scored with its lease's
  expiry and kept by the worker's heartbeat, so a SIGKILLed worker's slot is taken back
  once its lease lapses. A step that finds no slot gets in line and pauses (a ``slot``
  wait); whoever frees a slot hands it to the first in line (the slot is *reserved* for
  it) and answers its wait, which resumes its run at the frontier. Beat's sweep takes back
  lapsed slots and hands them on too (:func:`reconcile`).
- **Rate**: the step takes one start (and its cost, with ``tokens=``) from the shared
  token bucket ``step:<component>:<key>`` (``rate_acquire.lua``, the LLM client's). A
  short wait sleeps in the worker; a longer one pauses the step on a timer.

A step's pauses for its limits are waits under fixed keys, ``<step>/slot`` and
``<step>/rate``, whose answers are hints, not results: the step forgets the last answer
before it asks again, so an answer left over from an earlier hand-over never counts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from .. import events
from ..config import get_settings
from ..errors import RunCancelled, StepSuspended
from ..policy import Policy, field_value, key_value
from ..serialization import dumps
from ..states import LIVE_STATES, WaitKind, WaitOutcome
from ..store import Store
from .control import Run, resume
from .step import StepContext

log = logging.getLogger(__name__)
#: A rate-limit wait up to this long sleeps in the worker; a longer one pauses the step.
SLEEP_AT_MOST = 5.0
#: A slot handed to a paused step is kept this long for it to start (then taken back).
RESERVED_SECONDS = 60.0
_SLOT_ANSWER = dumps({"slot": True})


@dataclass(frozen=True)
class Held:
    """A slot a running step holds: its group and member (``<run id> <step key>``)."""

    group: str
    member: str
    limit: int


def group_of(component: str, key: str) -> str:
    return f"step:{component}:{key}"


def slot_name(group: str) -> str:
    """The name a slot wait goes by (``component:key``, its run.waiting's) from its group."""
    return group.removeprefix("step:")


def enter(ctx: StepContext, pol: Policy, value: Any) -> Held | None:
    """Pass the step's limits, or pause it (StepSuspended) until it may; returns the slot
    it holds (give it back with :func:`leave`)."""
    if pol.rate is not None and not _handed_a_slot(ctx, pol):
        _take_rate(ctx, pol, value)
    if pol.concurrency is None:
        return None
    limit = pol.concurrency.limit
    key = key_value(pol.concurrency.key, value, "concurrency")
    group, name = group_of(ctx.component, key), f"{ctx.component}:{key}"
    member, wait_key = f"{ctx.run_id} {ctx.step}", f"{ctx.step}/slot"
    ctx.store.forget_checkpoint(ctx.run_id, wait_key)
    now = time.time()
    holds, active, handed = ctx.store.slots(
        group, limit, now, add=member, order=now, score=now + get_settings().heartbeat_lapse,
        lapsed=now, index=ctx.store.keys.step_groups)
    _hand_over(ctx.store, group, limit, handed)
    if holds:
        return Held(group, member, limit)
    spec = {"kind": WaitKind.SLOT.value, "name": name, "step": ctx.step, "expires_at": None,
            "since": now, "limit": limit}
    waiting = events.make(events.RUN_WAITING, ctx.run_id, step=ctx.step, kind=WaitKind.SLOT.value,
                          name=name, reason=f"{active} of {limit} {name} steps running")
    outcome, _, resume_gen = ctx.store.begin_wait(ctx.run_id, ctx.gen, ctx.step, ctx.token,
                                                  wait_key, spec, None, now, waiting)
    if outcome == WaitOutcome.READY:  # handed a slot between asking and pausing
        return Held(group, member, limit)
    if outcome == WaitOutcome.PAUSED:
        raise StepSuspended(f"step {ctx.step} waits for a slot of {name} ({limit} at most)",
                            resume_gen)
    # the run moved on: out of the line, unless it moved on to a newer attempt of this
    # step (a restart), whose place in line or slot this member is now
    leave(ctx.store, Held(group, member, limit), owner=(ctx.gen, ctx.token))
    raise RunCancelled(f"run {ctx.run_id} moved on while step {ctx.step} asked for a slot")


def leave(store: Store, held: Held | None, owner: tuple[int, str] | None = None) -> None:
    """The step is done with its slot (it finished, failed or paused): the next in line
    gets it. ``owner``: the (generation, lease token) of the attempt giving it back; an
    attempt superseded meanwhile gives back nothing (a frozen worker's, resumed after the
    reaper restarted its step): the member, one per step, is the newer attempt's now, and
    releasing it let a step run beside it or dropped it from the line for good."""
    if held is None:
        return
    if owner is not None and _superseded(store, held, *owner):
        log.info("flowkit: a superseded attempt of %s leaves its slot to the newer one",
                 held.member)
        return
    now = time.time()
    _, _, handed = store.slots(held.group, held.limit, now, release=held.member,
                               score=now + RESERVED_SECONDS)
    _hand_over(store, held.group, held.limit, handed)


def _superseded(store: Store, held: Held, gen: int, token: str) -> bool:
    run_id, _, step = held.member.partition(" ")
    current_gen, lease = store.step_owner(run_id, step)
    return current_gen != str(gen) or (lease is not None and lease != token)


def reconcile(store: Store) -> int:
    """Take back the slots of steps whose lease lapsed (a dead worker, a reservation never
    used) and hand them on; beat's sweep runs it. Returns how many steps it resumed.

    A lapsed reservation may be a step whose wait was never answered (the process handing
    the slot over died between the two): its wait is answered now, and it asks again,
    rather than wait for good. A lapsed holder's step is not waiting: nothing to answer."""
    resumed, now = 0, time.time()
    for group, limit in store.groups(store.keys.step_groups).items():
        if store.drop_idle_group(group, limit, store.keys.step_groups):
            continue  # no slot held, none asked for: out of the index until one is
        lapsing = store.lapsing_slots(group, now)
        _, _, handed = store.slots(group, limit, now, score=now + RESERVED_SECONDS, lapsed=now)
        resumed += _hand_over(store, group, limit, handed)
        resumed += _take_back_from_ended(store, group, limit, now)
        for member in lapsing:
            run_id, _, step = member.partition(" ")
            if not store.waits_on(run_id, f"{step}/slot"):
                continue
            outcome, gen = _answer_slot_wait(store, run_id, step, slot_name(group))
            if outcome == WaitOutcome.RESUMED:
                resume(Run.load(run_id, store), gen)
            resumed += outcome in (WaitOutcome.RESUMED, WaitOutcome.DELIVERED)
    return resumed


def _take_back_from_ended(store: Store, group: str, limit: int, now: float) -> int:
    """Take back the slots of ``group`` kept for steps of runs that ended (or are gone)
    while no attempt of that step runs, and hand them on. A run cancelled just after a
    slot was handed to it (resumed, its step not yet begun) begins no step to use the slot
    or give it back: it stayed reserved for RESERVED_SECONDS, every step of the component
    (of every tenant, for a limit without a key) waiting meanwhile. A step that still runs
    after its run ended keeps its slot until it stops (it gives it back then)."""
    members = [member for member, _ in store.slot_holders(group)]
    states = store.run_states([member.partition(" ")[0] for member in members])
    resumed = 0
    for member, state in zip(members, states, strict=True):
        run_id, _, step = member.partition(" ")
        if state in LIVE_STATES or step in store.live_leases(run_id, now):
            continue
        _, _, handed = store.slots(group, limit, now, release=member,
                                   score=now + RESERVED_SECONDS)
        resumed += _hand_over(store, group, limit, handed)
    return resumed


def _hand_over(store: Store, group: str, limit: int, handed: list[str]) -> int:
    """Answer the slot waits of the steps just given a slot; a step whose run moved on gives
    its slot back at once (to the next in line)."""
    resumed = 0
    while handed:
        member = handed.pop(0)
        run_id, _, step = member.partition(" ")
        outcome, gen = _answer_slot_wait(store, run_id, step, slot_name(group))
        if outcome == WaitOutcome.RESUMED:
            resume(Run.load(run_id, store), gen)
        if outcome in (WaitOutcome.RESUMED, WaitOutcome.DELIVERED):
            resumed += 1
            continue
        now = time.time()
        _, _, more = store.slots(group, limit, now, release=member, score=now + RESERVED_SECONDS)
        handed.extend(more)
    return resumed


def _answer_slot_wait(store: Store, run_id: str, step: str, name: str) -> tuple[WaitOutcome, int]:
    resumed = events.make(events.RUN_RESUMED, run_id, by="slot", name=name, step=step)
    return store.deliver(run_id, "key", f"{step}/slot", _SLOT_ANSWER, time.time(), resumed)


def _handed_a_slot(ctx: StepContext, pol: Policy) -> bool:
    """Whether the step resumes from a slot wait, the slot handed to it: it took its rate
    before it got in line (the rate first, then the slot), and took it again when handed
    the slot (three steps were charged five starts, a token budget up to twice the spend).
    The wait's answer stays until the step asks for a slot again, just below."""
    return (pol.concurrency is not None
            and ctx.store.checkpoint(ctx.run_id, f"{ctx.step}/slot") is not None)


def _take_rate(ctx: StepContext, pol: Policy, value: Any) -> None:
    rate = pol.rate
    assert rate is not None
    key = key_value(rate.key, value, "rate limit")
    cost = float(field_value(rate.cost, value, "rate limit cost")) if rate.cost else 0.0
    if not 0 <= cost < math.inf:  # a negative cost would fill the bucket for the others
        raise ValueError(f"step {ctx.step}: its rate limit cost is {cost:g}; a cost is a "
                          "finite number >= 0.")
    budget = [rate.per_second, rate.burst, rate.tokens_per_second, rate.token_burst, cost,
              max(60, int(rate.burst / rate.per_second) + 1)]
    name, wait_key = f"{ctx.component}:{key}", f"{ctx.step}/rate"
    while True:
        wait = ctx.store.take_rate(group_of(ctx.component, key), budget)
        if wait == 0:
            return
        if wait <= SLEEP_AT_MOST:
            time.sleep(wait)
            continue
        now = time.time()
        spec = {"kind": WaitKind.SLEEP.value, "name": name, "step": ctx.step,
                "expires_at": now + wait, "since": now, "rate": True}
        waiting = events.make(events.RUN_WAITING, ctx.run_id, step=ctx.step,
                              kind=WaitKind.SLEEP.value, name=name, expires_at=now + wait,
                              reason=f"rate limit of {name}")
        ctx.store.forget_checkpoint(ctx.run_id, wait_key)  # the last rate wait's wake-up
        outcome, _, resume_gen = ctx.store.begin_wait(ctx.run_id, ctx.gen, ctx.step, ctx.token,
                                                      wait_key, spec, now + wait, now, waiting)
        if outcome == WaitOutcome.STOPPED:
            raise RunCancelled(f"run {ctx.run_id} moved on while step {ctx.step} waited")
        if outcome == WaitOutcome.PAUSED:
            raise StepSuspended(
                f"step {ctx.step} waits {wait:.1f}s for the rate limit of {name}", resume_gen)
