"""The flow-control scripts, each alone on a real Redis with no worker: a group's slots
(slots.lua, and hold_slots' renewal), a schedule's tick (claim_tick.lua), and a run held
for a slot and admitted (hold.lua, admit.lua).

Time is ours: every call gets an explicit ``now``.
"""

from __future__ import annotations

from typing import Any

import pytest

from flowkit import events
from flowkit.states import RunState
from tests.store.test_transitions import RUN, T, cancel, make_run, of_type, score, types

pytestmark = pytest.mark.integration

GROUP = "wf:acme"
OTHER_GROUP = "wf:globex"


# -- slots helpers --------------------------------------------------------------------------


def active(store, group: str = GROUP) -> dict[str, float]:
    """The group's slot holders: member -> holder score."""
    return dict(store.redis.zrange(store.keys.slots(group)[0], 0, -1, withscores=True))


def in_line(store, group: str = GROUP) -> list[tuple[str, float]]:
    """The group's line, first in line first: (member, place)."""
    return store.redis.zrange(store.keys.slots(group)[1], 0, -1, withscores=True)


def ask(store, member: str, order: float = 0.0, *, limit: int = 1, now: float = T,
        **kwargs: Any) -> tuple[bool, int, list[str]]:
    return store.slots(GROUP, limit, now, add=member, order=order, **kwargs)


def holding(store, *members: str, limit: int) -> None:
    """``members`` hold a slot each (scored T), the line is empty."""
    for n, member in enumerate(members):
        assert ask(store, member, limit=limit) == (True, n + 1, [])
    assert in_line(store) == []


def lined_up(store, *places: tuple[str, float], limit: int) -> None:
    """``places`` ((member, place) pairs) ask while every slot is taken: they are in line."""
    for member, place in places:
        holds, _, handed = ask(store, member, place, limit=limit)
        assert (holds, handed) == (False, [])
    assert in_line(store) == sorted(places, key=lambda p: p[1])


# -- the index of groups --------------------------------------------------------------------


def test_a_group_leaves_the_index_once_no_member_holds_or_waits_for_a_slot(store):
    """The index kept every concurrency key ever used (one per tenant), and beat's sweep
    read each of them every few seconds."""
    holding(store, "a", limit=1)
    lined_up(store, ("b", 1.0), limit=1)
    assert not store.drop_idle_group(GROUP, 1)  # held, and asked for
    assert store.slots(GROUP, 1, T + 1, release="a") == (False, 1, ["b"])
    assert not store.drop_idle_group(GROUP, 1)  # b holds it now
    store.slots(GROUP, 1, T + 2, release="b")
    assert store.drop_idle_group(GROUP, 1)
    assert GROUP not in store.groups()
    assert ask(store, "c") == (True, 1, [])  # asked for again: indexed again
    assert store.groups()[GROUP] == 1


# -- slots: asking ------------------------------------------------------------------------


@pytest.mark.parametrize(("holders", "limit"), [
    pytest.param(0, 1, id="empty-group"),
    pytest.param(1, 2, id="one-of-two-taken"),
    pytest.param(2, 5, id="two-of-five-taken"),
])
def test_slots_a_member_under_the_limit_gets_a_slot(store, holders, limit):
    before = [f"h{n}" for n in range(holders)]
    holding(store, *before, limit=limit)
    assert ask(store, "a", 7.0, limit=limit, now=T + 1) == (True, holders + 1, [])
    assert active(store) == {**dict.fromkeys(before, T), "a": T + 1}
    assert in_line(store) == []


@pytest.mark.parametrize("limit", [1, 3])
def test_slots_a_member_over_the_limit_is_put_in_line(store, limit):
    before = [f"h{n}" for n in range(limit)]
    holding(store, *before, limit=limit)
    assert ask(store, "a", 7.0, limit=limit, now=T + 1) == (False, limit, [])
    assert active(store) == dict.fromkeys(before, T)
    assert in_line(store) == [("a", 7.0)]


@pytest.mark.parametrize(("holder_score", "expected_score"), [
    pytest.param(None, T + 5, id="scored-now-by-default"),
    pytest.param(T + 50, T + 50, id="scored-as-asked"),
])
def test_slots_release_hands_the_slot_to_the_lowest_ordered_member_in_line(
    store, holder_score, expected_score,
):
    holding(store, "a", limit=1)
    lined_up(store, ("b", 20.0), ("c", 10.0), ("d", 30.0), limit=1)
    assert store.slots(GROUP, 1, T + 5, release="a", score=holder_score) == (False, 1, ["c"])
    assert active(store) == {"c": expected_score}
    assert in_line(store) == [("b", 20.0), ("d", 30.0)]


def test_slots_release_of_a_member_in_line_takes_it_out_of_the_line(store):
    holding(store, "a", limit=1)
    lined_up(store, ("b", 10.0), ("c", 20.0), limit=1)
    assert store.slots(GROUP, 1, T + 5, release="b") == (False, 1, [])
    assert active(store) == {"a": T} and in_line(store) == [("c", 20.0)]


@pytest.mark.parametrize(("limit", "line", "handed", "still_in_line"), [
    pytest.param(1, [], [], [], id="asker-alone-in-line"),
    pytest.param(2, [("x", 5.0)], ["x"], [], id="one-before-the-asker"),
    pytest.param(2, [("x", 5.0), ("y", 15.0)], ["x"], [("y", 15.0)], id="one-before-one-after"),
    pytest.param(3, [("x", 5.0), ("y", 15.0)], ["x", "y"], [], id="asker-between-two-given"),
])
def test_slots_the_asking_member_is_never_in_the_returned_list(
    store, limit, line, handed, still_in_line,
):
    """"a" holds the one slot, "b" is in line at 10; b asks again as a gives its slot back
    and the limit becomes ``limit``: b gets a slot, and only the others given one by the
    call are returned."""
    holding(store, "a", limit=1)
    lined_up(store, ("b", 10.0), *line, limit=1)
    holds, taken, others = ask(store, "b", 10.0, limit=limit, now=T + 5, release="a")
    assert (holds, taken, others) == (True, limit, handed)
    assert active(store) == dict.fromkeys(["b", *handed], T + 5)
    assert in_line(store) == still_in_line


def test_slots_the_asking_member_behind_the_line_is_not_returned_and_waits(store):
    holding(store, "a", limit=1)
    lined_up(store, ("x", 5.0), limit=1)
    assert ask(store, "b", 10.0, now=T + 5, release="a") == (False, 1, ["x"])
    assert active(store) == {"x": T + 5} and in_line(store) == [("b", 10.0)]


def test_slots_asking_again_while_in_line_keeps_its_place(store):
    holding(store, "a", limit=1)
    lined_up(store, ("b", 10.0), ("c", 20.0), limit=1)
    assert ask(store, "b", 30.0, now=T + 1) == (False, 1, [])  # would be behind c
    assert in_line(store) == [("b", 10.0), ("c", 20.0)]
    assert store.slots(GROUP, 1, T + 2, release="a") == (False, 1, ["b"])


@pytest.mark.parametrize(("holder_score", "expected_score"), [
    pytest.param(None, T + 5, id="scored-now-by-default"),
    pytest.param(T + 60, T + 60, id="scored-as-asked"),
])
def test_slots_a_holder_asking_again_holds_and_its_score_is_updated(
    store, holder_score, expected_score,
):
    holding(store, "a", limit=1)
    lined_up(store, ("b", 10.0), limit=1)
    assert ask(store, "a", 99.0, now=T + 5, score=holder_score) == (True, 1, [])
    assert active(store) == {"a": expected_score}
    assert in_line(store) == [("b", 10.0)]  # a is not in line, b still is


@pytest.mark.parametrize(("lapsed", "kept", "handed"), [
    pytest.param(T + 5, {"a": T + 10, "b": T + 30}, [], id="none-lapsed"),
    pytest.param(T + 10, {"a": T + 10, "b": T + 30}, [], id="scored-at-lapsed-keeps-it"),
    pytest.param(T + 20, {"b": T + 30, "c": T + 80}, ["c"], id="one-lapsed"),
    pytest.param(T + 40, {"c": T + 80, "d": T + 80}, ["c", "d"], id="both-lapsed"),
])
def test_slots_lapsed_takes_back_holders_scored_below_it_and_hands_their_slots_on(
    store, lapsed, kept, handed,
):
    assert ask(store, "a", limit=2, score=T + 10) == (True, 1, [])
    assert ask(store, "b", limit=2, score=T + 30) == (True, 2, [])
    lined_up(store, ("c", 1.0), ("d", 2.0), ("e", 3.0), limit=2)
    result = store.slots(GROUP, 2, lapsed, score=T + 80, lapsed=lapsed)
    assert result == (False, 2, handed)
    assert active(store) == kept
    assert [member for member, _ in in_line(store)] == ["c", "d", "e"][len(handed):]


def test_slots_lapsed_holder_asking_again_gets_back_in_line(store):
    assert ask(store, "a", limit=1, score=T + 10) == (True, 1, [])
    lined_up(store, ("b", 1.0), limit=1)
    assert ask(store, "a", 2.0, now=T + 20, lapsed=T + 20, score=T + 80) == (False, 1, ["b"])
    assert active(store) == {"b": T + 80} and in_line(store) == [("a", 2.0)]


# -- slots: the limit changes ----------------------------------------------------------------


def test_slots_raising_the_limit_hands_the_new_slots_to_the_line(store):
    holding(store, "a", limit=1)
    lined_up(store, ("b", 10.0), ("c", 20.0), ("d", 30.0), limit=1)
    assert store.slots(GROUP, 3, T + 5) == (False, 3, ["b", "c"])
    assert active(store) == {"a": T, "b": T + 5, "c": T + 5}
    assert in_line(store) == [("d", 30.0)]


def test_slots_lowering_the_limit_takes_no_slot_and_fills_none_until_under_it(store):
    holding(store, "a", "b", "c", limit=3)
    assert ask(store, "d", 10.0, limit=1, now=T + 1) == (False, 3, [])
    assert active(store) == {"a": T, "b": T, "c": T}
    assert store.slots(GROUP, 1, T + 2, release="a") == (False, 2, [])
    assert store.slots(GROUP, 1, T + 3, release="b") == (False, 1, [])
    assert in_line(store) == [("d", 10.0)]
    assert store.slots(GROUP, 1, T + 4, release="c") == (False, 1, ["d"])
    assert active(store) == {"d": T + 4}


# -- slots: the group index --------------------------------------------------------------------


@pytest.mark.parametrize(("index", "other"), [
    pytest.param(None, "step_groups", id="default-run-groups"),
    pytest.param("step_groups", "groups", id="step-groups"),
])
def test_slots_index_records_the_group_and_its_limit(store, index, other):
    expected = store.keys.groups if index is None else getattr(store.keys, index)
    kwargs = {} if index is None else {"index": expected}
    assert ask(store, "a", limit=2, **kwargs) == (True, 1, [])
    assert store.redis.hgetall(expected) == {GROUP: "2"}
    assert store.groups(None if index is None else expected) == {GROUP: 2}
    assert ask(store, "b", limit=3, now=T + 1, **kwargs) == (True, 2, [])  # the limit raised
    assert store.redis.hgetall(expected) == {GROUP: "3"}
    assert store.redis.exists(getattr(store.keys, other)) == 0


# -- hold_slots -------------------------------------------------------------------------------


@pytest.mark.parametrize(("group", "member"), [
    pytest.param(GROUP, "b", id="member-in-line"),
    pytest.param(GROUP, "z", id="unknown-member"),
    pytest.param(OTHER_GROUP, "a", id="unknown-group"),
])
def test_hold_slots_renews_only_holders_and_adds_no_member(store, group, member):
    holding(store, "a", limit=1)
    lined_up(store, ("b", 10.0), limit=1)
    store.hold_slots([(GROUP, "a"), (group, member)], T + 99)
    assert active(store) == {"a": T + 99}
    assert in_line(store) == [("b", 10.0)]
    assert active(store, OTHER_GROUP) == {} and in_line(store, OTHER_GROUP) == []


# -- claim_tick -------------------------------------------------------------------------------

SCHEDULE = "nightly"


def put_schedule(store, next_at: float | None, schedule_id: str = SCHEDULE) -> None:
    store.put_schedule({"id": schedule_id, "workflow": "wf", "cron": "0 3 * * *"}, next_at)


def due_score(store, schedule_id: str = SCHEDULE) -> float | None:
    return store.redis.zscore(store.keys.schedules_due, schedule_id)


@pytest.mark.parametrize(("due_at", "next_at"), [
    pytest.param(T + 60, T + 120, id="whole-seconds"),
    pytest.param(1_700_000_000.123456, 1_700_086_400.654321, id="epoch-with-fraction"),
])
def test_claim_tick_first_claim_moves_the_schedule_on(store, due_at, next_at):
    put_schedule(store, due_at)
    ((schedule_id, read),) = store.due_schedules(due_at)  # the tick as a sweep reads it
    assert schedule_id == SCHEDULE
    assert store.claim_tick(SCHEDULE, read, next_at) is True
    assert due_score(store) == next_at
    assert store.due_schedules(due_at) == []


def test_a_claimed_tick_is_owed_until_it_is_settled(store):
    put_schedule(store, T + 60)
    assert store.claim_tick(SCHEDULE, T + 60, T + 120, fires=T + 60, now=T + 61) is True
    assert store.unsettled_ticks(T + 60) == []  # claimed after that
    assert store.unsettled_ticks(T + 61) == [(SCHEDULE, T + 60)]
    store.tick_settled(SCHEDULE, T + 60)
    assert store.unsettled_ticks(T + 999) == []


def test_a_missed_tick_claims_no_run(store):
    put_schedule(store, T + 60)
    assert store.claim_tick(SCHEDULE, T + 60, T + 999, fires=None, now=T + 900) is True
    assert store.unsettled_ticks(T + 999) == []


def _claimed_already(store):
    put_schedule(store, T + 60)
    assert store.claim_tick(SCHEDULE, T + 60, T + 120) is True


def _paused(store):
    put_schedule(store, T + 60)
    put_schedule(store, None)


def _deleted(store):
    put_schedule(store, T + 60)
    assert store.delete_schedule(SCHEDULE) is True


def _never_stored(store):
    put_schedule(store, T + 60, schedule_id="other")


def _moved_since_read(store):
    put_schedule(store, T + 60)
    put_schedule(store, T + 90)  # edited after the sweep read T + 60


@pytest.mark.parametrize("setup", [
    pytest.param(_claimed_already, id="second-claim-of-the-tick"),
    pytest.param(_paused, id="paused"),
    pytest.param(_deleted, id="deleted"),
    pytest.param(_never_stored, id="unknown"),
    pytest.param(_moved_since_read, id="tick-moved-since-read"),
])
def test_claim_tick_not_due_at_that_tick_is_refused_and_changes_nothing(store, setup):
    setup(store)
    before = store.redis.zrange(store.keys.schedules_due, 0, -1, withscores=True)
    assert store.claim_tick(SCHEDULE, T + 60, T + 999) is False
    assert store.redis.zrange(store.keys.schedules_due, 0, -1, withscores=True) == before


# -- take_buffered --------------------------------------------------------------------------------


def test_take_buffered_takes_a_held_back_tick_once(store):
    store.buffer_tick(SCHEDULE, 1_700_000_000.123456)
    [(schedule_id, tick)] = store.buffered_ticks().items()  # as a sweep reads it
    assert (schedule_id, tick) == (SCHEDULE, 1_700_000_000.123456)
    assert store.take_buffered(SCHEDULE, tick) is True
    assert store.buffered_ticks() == {}
    assert store.take_buffered(SCHEDULE, tick) is False  # a second beat's sweep: none left


def test_take_buffered_of_a_tick_replaced_since_it_was_read_keeps_the_later_one(store):
    """Another beat held a later tick back after this sweep read the earlier one."""
    store.buffer_tick(SCHEDULE, T + 60)
    store.buffer_tick(SCHEDULE, T + 120)
    assert store.take_buffered(SCHEDULE, T + 60) is False
    assert store.buffered_ticks() == {SCHEDULE: T + 120}
    assert store.take_buffered("other", T + 120) is False
    assert store.buffered_ticks() == {SCHEDULE: T + 120}


def test_a_deleted_schedule_holds_no_tick_back(store):
    put_schedule(store, T + 60)
    store.buffer_tick(SCHEDULE, T + 60)
    assert store.delete_schedule(SCHEDULE) is True
    assert store.buffered_ticks() == {}


# -- forget_answer ----------------------------------------------------------------------------

WAIT_KEY = "0:ask/0:wait:input:approval"


def test_forget_answer_drops_the_refused_answer_only_while_it_stands(store):
    refused, corrected = '{"input":{"ok":true}}', '{"input":{"ok":true,"by":"ann"}}'
    store.save_checkpoint(RUN, WAIT_KEY, refused)
    assert store.forget_answer(RUN, WAIT_KEY, refused) is True
    assert store.checkpoint(RUN, WAIT_KEY) is None
    assert store.forget_answer(RUN, WAIT_KEY, refused) is False  # none left
    # a stale attempt refusing the old answer after the wait took a corrected one
    store.save_checkpoint(RUN, WAIT_KEY, corrected)
    assert store.forget_answer(RUN, WAIT_KEY, refused) is False
    assert store.checkpoint(RUN, WAIT_KEY) == corrected


# -- swap_answer ------------------------------------------------------------------------------


def test_swap_answer_puts_the_older_event_in_place_only_while_the_early_one_stands(store):
    key = "0:chat/0:wait:event:chat:1"
    early, older = '{"event":2,"sent_id":"2-0"}', '{"event":1,"sent_id":"1-0"}'
    assert store.swap_answer(RUN, key, early, older) is False  # no answer: none made
    assert store.checkpoint(RUN, key) is None
    store.save_checkpoint(RUN, key, early)
    assert store.swap_answer(RUN, key, early, older) is True
    assert store.checkpoint(RUN, key) == older
    assert store.swap_answer(RUN, key, early, '{"event":0}') is False  # early is gone
    assert store.checkpoint(RUN, key) == older


# -- hold / admit -------------------------------------------------------------------------------

REASON = "2 of 2 runs of acme active"


def hold(store, run_id: str = RUN, *, now: float = T + 1) -> bool:
    return store.hold(run_id, REASON, now, events.make(events.RUN_HELD, run_id, reason=REASON))


def admit(store, run_id: str = RUN, *, now: float = T + 2) -> bool:
    return store.admit(run_id, now, events.make(events.RUN_ADMITTED, run_id))


def test_hold_of_a_queued_run_holds_it_out_of_the_queued_index(store):
    make_run(store)
    assert score(store, store.keys.queued) == T
    for key in (store.keys.run(RUN), store.keys.events(RUN)):
        store.redis.expire(key, 60)  # as an ended run's would, were it retried meanwhile
    assert hold(store, now=T + 1) is True
    run = store.get_run(RUN)
    assert (run["state"], run["held_for"]) == (RunState.QUEUED, REASON)
    assert float(run["updated_at"]) == T + 1
    assert score(store, store.keys.queued) is None
    assert types(store) == [events.RUN_QUEUED, events.RUN_HELD]
    assert of_type(store, events.RUN_HELD)[0]["reason"] == REASON
    for key in (store.keys.run(RUN), store.keys.events(RUN)):
        assert store.redis.ttl(key) == -1  # held for however long: a live run never expires


def test_admit_of_a_held_run_admits_it_once(store):
    make_run(store)
    assert hold(store, now=T + 1) is True
    assert admit(store, now=T + 2) is True
    run = store.get_run(RUN)
    assert run["state"] == RunState.QUEUED and "held_for" not in run
    assert float(run["updated_at"]) == T + 2
    assert score(store, store.keys.queued) == T + 2
    assert types(store) == [events.RUN_QUEUED, events.RUN_HELD, events.RUN_ADMITTED]
    assert admit(store, now=T + 3) is False
    assert float(store.get_run(RUN)["updated_at"]) == T + 2
    assert score(store, store.keys.queued) == T + 2
    assert len(of_type(store, events.RUN_ADMITTED)) == 1


def _held_then_cancelled(store) -> str:
    make_run(store)
    assert hold(store) is True
    assert cancel(store, now=T + 1.5) == 1
    return RUN


def _in_state(state: RunState):
    def setup(store) -> str:
        return make_run(store, state)
    return setup


def _unknown(store) -> str:
    return "unknown"


ENDED_OR_UNKNOWN = [
    pytest.param(_in_state(RunState.SUCCEEDED), id="succeeded"),
    pytest.param(_in_state(RunState.FAILED), id="failed"),
    pytest.param(_in_state(RunState.CANCELLED), id="cancelled"),
    pytest.param(_unknown, id="unknown"),
]


def assert_unchanged(store, run_id: str, act) -> None:
    run_before, events_before = store.get_run(run_id), types(store, run_id)
    queued_before = score(store, store.keys.queued, run_id)
    assert act(store, run_id) is False
    assert store.get_run(run_id) == run_before
    assert types(store, run_id) == events_before
    assert score(store, store.keys.queued, run_id) == queued_before
    if not run_before:
        assert store.redis.exists(store.keys.run(run_id), store.keys.events(run_id)) == 0


@pytest.mark.parametrize("setup", [
    *ENDED_OR_UNKNOWN,
    pytest.param(_in_state(RunState.RUNNING), id="running"),
])
def test_hold_of_a_run_not_queued_does_nothing(store, setup):
    assert_unchanged(store, setup(store), hold)


@pytest.mark.parametrize("setup", [
    *ENDED_OR_UNKNOWN,
    pytest.param(_held_then_cancelled, id="held-then-cancelled"),
    pytest.param(_in_state(RunState.QUEUED), id="queued-never-held"),
    pytest.param(_in_state(RunState.RUNNING), id="running"),
])
def test_admit_of_a_run_not_held_does_nothing(store, setup):
    assert_unchanged(store, setup(store), admit)
