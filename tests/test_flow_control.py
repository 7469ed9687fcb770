"""Flow control on a real worker: concurrency keys hold runs in Redis, in order, and a slot
is never leaked; priorities go first; schedules start one run per tick."""

from __future__ import annotations

import threading
import time

import pytest

import flowkit
from flowkit.engine import limits
from flowkit.store import get_store
from tests import workflows as wf
from tests.conftest import open_gate, reached_gate, wait_until

pytestmark = pytest.mark.integration
WAIT = 30


@pytest.fixture(autouse=True)
def _deployment(store, worker):
    """A clean store and the session's worker."""


def most_active(tenant: str) -> int:
    """The most runs of ``tenant`` that were inside their step at once, from their marks."""
    active = peak = 0
    for mark in get_store().redis.lrange(f"active:{tenant}", 0, -1):
        active += 1 if mark.startswith("+") else -1
        peak = max(peak, active)
    return peak


def test_runs_over_a_key_limit_are_held_in_redis_and_admitted_in_order():
    first = [wf.per_tenant.start({"tenant": "acme", "gate": True}) for _ in range(2)]
    for run in first:
        reached_gate(run, "tenant_work")
    held = [wf.per_tenant.start({"tenant": "acme"}) for _ in range(3)]
    for run in held:
        record = flowkit.get_run(run.id)
        assert record.state == "queued" and record.held_for == "2 of 2 runs of acme active"
        assert [e.type for e in run.events()] == ["run.queued", "run.held"]
    other = wf.per_tenant.start({"tenant": "globex"})  # another key: admitted at once
    assert other.result(WAIT) == {"tenant": "globex"}
    # one slot frees: the held runs take it one after another (each admitted when the one
    # before it ended), so their admission times say the order (with both slots freeing at
    # once, two admissions race and their times need not)
    open_gate(first[0], "tenant_work")
    assert [run.wait(WAIT).state for run in [first[0], *held]] == ["succeeded"] * 4
    open_gate(first[1], "tenant_work")
    assert first[1].wait(WAIT).state == "succeeded"
    assert most_active("acme") <= 2
    admitted = [next(e.data["ts"] for e in r.events() if e.type == "run.admitted") for r in held]
    assert admitted == sorted(admitted)  # first in, first admitted


def test_a_slot_is_given_back_however_the_run_ends():
    blocker = wf.per_tenant.start({"tenant": "initech", "gate": True})
    reached_gate(blocker, "tenant_work")
    second = wf.per_tenant.start({"tenant": "initech", "gate": True})
    reached_gate(second, "tenant_work")
    queued = wf.per_tenant.start({"tenant": "initech", "gate": True})
    assert flowkit.get_run(queued.id).held_for
    flowkit.cancel(blocker.id)  # cancelled: its slot goes on once its step stops
    assert flowkit.get_run(queued.id).held_for  # the blocker's step still runs, at its gate
    open_gate(blocker, "tenant_work")  # it runs to its end, unaware: then its slot goes on
    reached_gate(queued, "tenant_work")
    # both slots taken (second, queued): held. It was started once queued had ended, took
    # the free slot, and now and then succeeded before the cancel came
    cancelled_in_line = wf.per_tenant.start({"tenant": "initech"})
    assert flowkit.get_run(cancelled_in_line.id).held_for
    flowkit.cancel(cancelled_in_line.id)  # one cancelled while held never takes a slot
    # and waits for nothing: `flowkit status` said it waited for "2 of 2 runs ... active"
    assert flowkit.get_run(cancelled_in_line.id).held_for is None
    for run in (second, queued):
        open_gate(run, "tenant_work")
    assert second.result(WAIT) and queued.result(WAIT)
    last = wf.per_tenant.start({"tenant": "initech"})
    assert last.result(WAIT) and not flowkit.get_run(last.id).held_for


def test_the_groups_of_keys_no_run_holds_leave_beat_s_index():
    """Every concurrency key ever used (a tenant's, a domain's) stayed in the index beat's
    sweep reads every few seconds: 20,000 made one sweep longer than its interval."""
    from flowkit.engine import reaper

    store = get_store()
    runs = [wf.per_tenant.start({"tenant": f"t{i}"}) for i in range(3)]
    steps = [wf.one_per_domain.start({"domain": f"d{i}.example"}) for i in range(2)]
    assert {run.wait(WAIT).state for run in runs + steps} == {"succeeded"}
    assert {f"per_tenant:t{i}" for i in range(3)} <= set(store.groups())
    assert len(store.groups(store.keys.step_groups)) >= 2
    reaper.sweep()
    assert not any(group.startswith("per_tenant:t") for group in store.groups())
    assert store.groups(store.keys.step_groups) == {}


def test_a_higher_priority_run_is_admitted_first():
    blockers = [wf.per_tenant.start({"tenant": "umbrella", "gate": True}) for _ in range(2)]
    for run in blockers:
        reached_gate(run, "tenant_work")
    low = wf.per_tenant.start({"tenant": "umbrella"}, priority=0)
    high = wf.per_tenant.start({"tenant": "umbrella"}, priority=9)
    open_gate(blockers[0], "tenant_work")
    assert high.result(WAIT)
    assert flowkit.get_run(low.id).state in ("queued", "running", "succeeded")
    open_gate(blockers[1], "tenant_work")
    assert low.result(WAIT)
    assert flowkit.get_run(high.id).started_at < flowkit.get_run(low.id).started_at


def test_a_schedule_starts_one_run_per_tick_and_can_be_paused_and_deleted():
    schedule = flowkit.schedules.create("simple", every=1, input={"n": 1}, id="every-second")
    assert schedule["next_at"] > time.time() - 1 and not schedule["paused"]
    from flowkit.engine.reaper import fire_schedules

    tick = schedule["next_at"]
    assert fire_schedules(tick - 0.5) == []  # not due yet
    [first] = fire_schedules(tick + 0.1)
    assert fire_schedules(tick + 0.2) == []  # the same tick, swept again: nothing
    assert flowkit.get_run(first).wait(WAIT).output == {"n": 4}
    flowkit.schedules.pause("every-second")
    assert fire_schedules(tick + 10) == []
    resumed_at = time.time()
    flowkit.schedules.resume("every-second")
    assert flowkit.schedules.get("every-second")["next_at"] > resumed_at
    flowkit.schedules.delete("every-second")
    assert flowkit.schedules.list() == []
    with pytest.raises(flowkit.NotFound):
        flowkit.schedules.get("every-second")


def test_a_sweep_later_than_the_period_starts_every_tick_it_passed():
    schedule = flowkit.schedules.create("simple", every=1, input={"n": 1}, id="late-sweep")
    from flowkit.engine.reaper import fire_schedules

    tick = schedule["next_at"]
    started = fire_schedules(tick + 4.5)  # a busy beat: the first sweep after 5 ticks
    keys = [flowkit.get_run(run_id).idempotency_key for run_id in started]
    assert keys == [f"schedule:late-sweep:{tick + i:.3f}" for i in range(5)]
    assert fire_schedules(tick + 4.6) == []  # each once
    assert flowkit.schedules.get("late-sweep")["next_at"] == pytest.approx(tick + 5, abs=1e-3)
    # beyond the grace (60 s) the ticks are missed, by the documented policy
    assert fire_schedules(tick + 100) == []
    assert flowkit.schedules.get("late-sweep")["next_at"] == pytest.approx(tick + 101, abs=1e-3)
    flowkit.schedules.delete("late-sweep")


# -- a component's fleet-wide limits -------------------------------------------------------


def paused_for(run: flowkit.Run, kind: str) -> flowkit.events.Event:
    """The run.waiting event of ``run`` (read from its stream as it comes)."""
    for event in flowkit.follow(run.id):
        if event.type == "run.waiting":
            assert event.data["kind"] == kind, event.data
            return event
    raise AssertionError(f"run {run.id} ended without waiting")


def test_a_step_over_its_components_concurrency_waits_without_a_worker_and_starts_next():
    holder = wf.one_per_domain.start({"domain": "a.example", "gate": True})
    reached_gate(holder, "scrape")
    behind = wf.one_per_domain.start({"domain": "a.example"})
    waiting = paused_for(behind, "slot")
    assert waiting.data["name"] == "t.scrape:a.example"
    assert flowkit.get_run(behind.id).state == "waiting"
    # the worker is free meanwhile, and another key is not held up
    others = [wf.one_per_domain.start({"domain": "b.example"}) for _ in range(5)]
    assert [run.wait(WAIT).state for run in others] == ["succeeded"] * 5
    assert flowkit.get_run(behind.id).state == "waiting"
    open_gate(holder, "scrape")
    assert behind.result(WAIT) == {"domain": "a.example"}
    resumed = [e for e in behind.events() if e.type == "run.resumed"]
    assert len(resumed) == 1
    # named as its run.waiting was (it had no name: a page could not match the two)
    assert (resumed[0].data["by"], resumed[0].data["name"]) == ("slot", "t.scrape:a.example")
    assert most_active("a.example") == 1
    store = get_store()
    assert store.redis.zcard(store.keys.slots("step:t.scrape:a.example")[0]) == 0


def test_a_slot_kept_for_a_run_that_ended_before_its_step_began_goes_on_at_the_next_sweep():
    """A run cancelled just after a slot was handed to it (resumed, its step not yet begun)
    begins no step to use the slot or give it back: it stayed reserved for a minute, every
    step of the component waiting meanwhile."""
    store = get_store()
    group = limits.group_of("t.scrape", "c.example")
    # what that race leaves, made directly: a cancelled run whose step never began holds
    # the group's one slot as a reservation
    gone = wf.one_per_domain.start({"domain": "c.example"}, delay=3600)
    flowkit.cancel(gone.id)
    now = time.time()
    store.slots(group, 1, now, add=f"{gone.id} 0:t.scrape",
                score=now + limits.RESERVED_SECONDS, index=store.keys.step_groups)
    behind = wf.one_per_domain.start({"domain": "c.example"})
    paused_for(behind, "slot")
    assert limits.reconcile(store) == 1  # as beat's next sweep does
    assert behind.result(WAIT) == {"domain": "c.example"}
    assert store.redis.zcard(store.keys.slots(group)[0]) == 0


def test_a_step_with_a_rate_and_a_concurrency_limit_pays_its_rate_once_though_it_waited_in_line():
    """It took its rate, got in line for a slot and paused; handed the slot, it took its
    rate again: three steps were charged five starts (a token budget twice the spend)."""
    holder = wf.one_per_domain_rated.start({"domain": "r.example", "gate": True})
    reached_gate(holder, "scrape")
    behind = [wf.one_per_domain_rated.start({"domain": "r.example"}) for _ in range(2)]
    for run in behind:
        paused_for(run, "slot")
    open_gate(holder, "scrape")
    assert [run.wait(WAIT).state for run in [holder, *behind]] == ["succeeded"] * 3
    store = get_store()
    level = float(store.redis.hget(store.keys.rate("step:t.scrape:r.example"), "req"))
    assert 10 - level == pytest.approx(3, abs=0.05)  # one start each (2/h refills ~0.002)


def test_a_cancelled_run_keeps_its_slot_until_its_running_step_stops():
    """A cancel is seen at the step's next event or check: its slot went to the next run of
    the key at once, and the two worked side by side (a tenant limited to 2 had 3)."""
    first = [wf.per_tenant.start({"tenant": "k1", "gate": True, "report": True})
             for _ in range(2)]
    for run in first:
        reached_gate(run, "tenant_work")
    behind = wf.per_tenant.start({"tenant": "k1"})
    assert behind.refresh().held_for == "2 of 2 runs of k1 active"
    flowkit.cancel(first[0].id)  # its step waits at its gate: it still runs
    assert behind.refresh().held_for == "2 of 2 runs of k1 active"
    assert "run.admitted" not in [e.type for e in behind.events()]
    open_gate(first[0], "tenant_work")  # it reports, sees the cancel and stops: the slot goes
    assert behind.result(WAIT) == {"tenant": "k1"}
    open_gate(first[1], "tenant_work")
    assert first[1].result(WAIT)["tenant"] == "k1"
    assert flowkit.get_run(first[0].id).state == "cancelled"
    assert most_active("k1") == 2


def test_a_failed_run_s_slot_goes_on_when_its_last_running_branch_fails_too():
    """The run a branch failed kept its slot while its other branch ran; that branch then
    failed as well, and the slot waited for beat's sweep (none runs here: for ever)."""
    first = wf.failing_branches.start({"tenant": "fb"})
    reached_gate(first, "late_branch")
    wait_until(lambda: first.refresh().state == "failed", WAIT, "the first branch's failure")
    behind = wf.failing_branches.start({"tenant": "fb"})
    assert behind.refresh().held_for == "1 of 1 runs of fb active"  # its step still runs
    open_gate(first, "late_branch")  # it fails too, after its run: the slot goes now
    reached_gate(behind, "late_branch")
    open_gate(behind, "late_branch")
    assert behind.wait(WAIT).state == "failed"


def test_a_cancelled_step_in_line_passes_its_slot_on():
    holder = wf.one_per_domain.start({"domain": "c.example", "gate": True})
    reached_gate(holder, "scrape")
    gone = wf.one_per_domain.start({"domain": "c.example"})
    paused_for(gone, "slot")
    last = wf.one_per_domain.start({"domain": "c.example"})
    paused_for(last, "slot")
    flowkit.cancel(gone.id)
    open_gate(holder, "scrape")
    assert last.result(WAIT) == {"domain": "c.example"}
    assert flowkit.get_run(gone.id).state == "cancelled"


@pytest.mark.long  # mostly idle waiting: beside the rest (scripts/test)
def test_a_long_rate_limit_wait_pauses_the_step_on_a_timer(beat):
    first = wf.rare_ping.start({"user": "ann"})
    assert first.result(WAIT)
    began = time.time()
    second = wf.rare_ping.start({"user": "ann"})
    waiting = paused_for(second, "sleep")
    assert waiting.data["name"] == "t.ping:ann"
    assert began + 5 < waiting.data["expires_at"] <= began + 11
    other = wf.rare_ping.start({"user": "bob"})  # another key has its own bucket
    assert other.result(WAIT)
    assert second.result(WAIT)
    pings = [float(t) for t in get_store().redis.lrange("pinged:ann", 0, -1)]
    assert len(pings) == 2 and pings[1] - pings[0] >= 9.5


def test_a_token_budget_spaces_steps_by_what_they_cost():
    runs = [wf.weighed_ping.start({"user": "cat", "size": 10}) for _ in range(3)]
    assert [run.wait(WAIT).state for run in runs] == ["succeeded"] * 3
    pings = sorted(float(t) for t in get_store().redis.lrange("pinged:cat", 0, -1))
    # 10 units a second, 10 a step: one step a second, though 100 steps a second are allowed
    assert [round(b - a, 1) >= 0.9 for a, b in zip(pings, pings[1:], strict=False)] == [True, True]
    cheap = [wf.weighed_ping.start({"user": "dan", "size": 1}) for _ in range(5)]
    assert [run.wait(WAIT).state for run in cheap] == ["succeeded"] * 5
    spread = [float(t) for t in get_store().redis.lrange("pinged:dan", 0, -1)]
    assert max(spread) - min(spread) < 0.9  # 5 units fit in the budget at once


@pytest.mark.parametrize("size", [-1000, "nan"])
def test_a_negative_or_nan_cost_fails_the_step_instead_of_filling_the_bucket(size):
    """-1000 was taken from the budget: the bucket filled up for every other step."""
    run = wf.weighed_ping.start({"user": "eve", "size": size})
    with pytest.raises(flowkit.StepError, match="its rate limit cost is (-1000|nan); a cost is "
                                                "a finite number >= 0"):
        run.result(WAIT)
    assert get_store().redis.lrange("pinged:eve", 0, -1) == []


@pytest.mark.parametrize("tenant", [None, True, [1], {"a": 1}, "", 2.5])
def test_a_concurrency_key_that_is_not_text_or_a_whole_number_is_refused(store, tenant):
    """str() made tenant None and tenant "None" one key (so one line), True and "True"
    too; null was taken although a missing key is refused."""
    with pytest.raises(flowkit.ValidationError) as refused:
        wf.per_tenant.start({"tenant": tenant})
    assert list(refused.value.fields) == ["tenant"]
    assert "a key is non-empty text or a whole number" in refused.value.fields["tenant"][0]
    assert flowkit.list_runs(workflow="per_tenant") == []


def test_a_whole_number_key_is_the_same_key_as_its_text(store):
    """5.0 (JSON has one number type; Python's json writes 5.0 so) was refused as "not a
    whole number"."""
    as_number = wf.per_tenant.start({"tenant": 5}, delay=3600)
    as_text = wf.per_tenant.start({"tenant": "5"}, delay=3600)
    as_float = wf.per_tenant.start({"tenant": 5.0}, delay=3600)
    assert as_number.concurrency_group == as_text.concurrency_group == "per_tenant:5"
    assert as_float.concurrency_group == "per_tenant:5"
    for run in (as_number, as_text, as_float):
        flowkit.cancel(run.id)


def test_a_key_function_that_reads_no_key_refuses_the_input_and_a_component_key_is_a_config_error():
    from flowkit.policy import key_value

    keyed = flowkit.Concurrency(limit=1, key=lambda data: data.get("tenant"))
    with pytest.raises(flowkit.ValidationError) as refused:
        keyed.key_of({}, None)
    [said] = refused.value.fields["_schema"]
    assert said.startswith("This workflow's runs queue by Concurrency(key=test_a_key_function")
    assert "which returned null for this input: a key is " in said
    assert key_value("domain", {"domain": 5}, "concurrency") == "5"
    with pytest.raises(flowkit.ConfigError, match=r"the concurrency key 'domain' is None: a key"):
        key_value("domain", {"domain": None}, "concurrency")


def test_a_tick_whose_sweep_died_after_claiming_it_is_started_by_a_later_sweep_once():
    """The claim moved the schedule on before its run started: a sweep killed in between
    (or a start that Redis refused) lost the tick for good."""
    from flowkit.engine import reaper, schedules
    from flowkit.store import get_store

    schedule = flowkit.schedules.create("simple", every=3600, input={"n": 1}, id="died")
    tick = schedule["next_at"]
    [(definition, claimed)] = schedules.claim_due(tick + 0.1)  # the sweep dies here
    assert claimed == tick and get_store().unsettled_ticks(tick + 1) == [("died", tick)]
    assert reaper.fire_schedules(tick + 1) == []  # claimed a moment ago: its sweep's to start
    [run_id] = reaper.fire_schedules(tick + 0.1 + reaper.UNSETTLED_SECONDS + 1)
    assert flowkit.get_run(run_id).idempotency_key == schedules.idempotency_key(definition, tick)
    assert get_store().unsettled_ticks(tick + 3600) == []
    assert reaper.fire_schedules(tick + 60) == []  # once
    flowkit.schedules.delete("died")


def test_a_tick_whose_sweep_died_after_starting_its_run_is_settled_without_another():
    from flowkit.engine import reaper, schedules
    from flowkit.store import get_store

    schedule = flowkit.schedules.create("simple", every=3600, input={"n": 1}, id="half-done")
    tick = schedule["next_at"]
    [(definition, _)] = schedules.claim_due(tick + 0.1)
    first = reaper._fire(get_store(), definition, tick)  # then the sweep dies
    assert reaper.fire_schedules(tick + 0.1 + reaper.UNSETTLED_SECONDS + 1) == []
    assert get_store().unsettled_ticks(tick + 3600) == []
    assert [r.id for r in flowkit.list_runs(workflow="simple")] == [first]
    flowkit.schedules.delete("half-done")


def test_an_owed_tick_of_a_paused_schedule_starts_no_run():
    from flowkit.engine import reaper, schedules
    from flowkit.store import get_store

    schedule = flowkit.schedules.create("simple", every=3600, input={"n": 1}, id="paused-owed")
    tick = schedule["next_at"]
    schedules.claim_due(tick + 0.1)  # the sweep dies here
    flowkit.schedules.pause("paused-owed")
    assert reaper.fire_schedules(tick + 0.1 + reaper.UNSETTLED_SECONDS + 1) == []
    assert get_store().unsettled_ticks(tick + 3600) == []
    assert flowkit.list_runs(workflow="simple") == []
    flowkit.schedules.delete("paused-owed")


def test_an_owed_tick_that_a_later_tick_followed_starts_no_run_under_an_overlap_policy():
    """Started late, an owed tick of an overlap="cancel" schedule cancelled the later tick's
    run for its own; under "buffer" it ran after it."""
    from flowkit.engine import reaper, schedules
    from flowkit.store import get_store

    schedule = flowkit.schedules.create("approval", every=20, input={"n": 1}, id="superseded",
                                        overlap="cancel")
    tick = schedule["next_at"]
    schedules.claim_due(tick + 0.1)  # the sweep dies here
    [later] = reaper.fire_schedules(tick + 20.1)  # the next tick's run: it waits for a person
    assert reaper.fire_schedules(tick + 0.1 + reaper.UNSETTLED_SECONDS + 1) == []
    assert get_store().unsettled_ticks(tick + 3600) == []
    assert flowkit.get_run(later).state != "cancelled"
    flowkit.cancel(later)
    flowkit.schedules.delete("superseded")


def test_a_schedule_whose_workflow_is_gone_says_so_once_and_shows_why(caplog, flowkit_env):
    """Its workflow removed from the code, each tick logged a traceback, and nothing the
    operator reads (the schedules' listing, the doctor) told."""
    import logging

    from flowkit.engine.doctor import examine
    from flowkit.engine.reaper import fire_schedules

    flowkit.schedules.create("simple", every=1, input={"n": 1}, id="orphan")
    store = get_store()
    definition, tick = store.schedule("orphan")
    store.put_schedule({**definition, "workflow": "removed-since"}, tick)  # the code lost it
    with caplog.at_level(logging.ERROR, logger="flowkit"):
        assert fire_schedules(tick + 2.1) == []  # three ticks, each refused
    said = [r for r in caplog.records if "orphan" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None, said  # once, one line
    assert "No workflow named 'removed-since'" in said[0].getMessage()
    error = flowkit.schedules.get("orphan")["last_error"]
    assert error["type"] == "WorkflowNotFound" and error["tick"] == pytest.approx(tick + 2)
    assert flowkit.schedules.list()[0]["last_error"] == error
    import os
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "flowkit.cli", "schedules", "list"],
                            env={**os.environ, **flowkit_env}, capture_output=True, text=True,
                            timeout=60)
    assert "Schedule orphan: its tick of " in listed.stdout, listed
    assert "started no run: No workflow named 'removed-since'." in listed.stdout
    [finding] = [f for f in examine(None, "flowkit", None) if f.check == "schedules"]
    assert finding.level == "warning" and "orphan" in finding.message
    # fixed: its next tick starts a run, and the error is gone
    store.put_schedule(definition, tick + 3)
    [run_id] = fire_schedules(tick + 3.1)
    assert flowkit.get_run(run_id).wait(WAIT).output == {"n": 4}
    assert flowkit.schedules.get("orphan")["last_error"] is None
    flowkit.schedules.delete("orphan")


def test_a_stored_schedule_whose_zone_this_host_lacks_stops_no_sweep_and_says_why(caplog):
    """Its zone unknown here (tzdata removed it, or an older one lacks it), every sweep
    raised before it gave back slots, compacted or recorded itself (a held run waited for
    good), and resuming it over REST was a 500."""
    import logging

    from flowkit.engine import reaper

    store = get_store()
    flowkit.schedules.create("simple", cron="0 9 * * *", input={"n": 1}, id="old-zone")
    definition, _ = store.schedule("old-zone")
    due = time.time() - 1
    store.put_schedule({**definition, "timezone": "US/Pacific-New"}, due)  # stored long ago
    before = (store.last_sweep() or {}).get("at", 0)
    with caplog.at_level(logging.ERROR, logger="flowkit"):
        reaper.sweep()  # raised ConfigError: the passes after it never ran
        reaper.sweep()
    assert store.last_sweep()["at"] > before  # its last pass, the record doctor reads, ran
    said = [r.getMessage() for r in caplog.records if "old-zone" in r.getMessage()]
    assert len(said) == 1 and "its next tick cannot be computed: unknown time zone " \
        "'US/Pacific-New'" in said[0], said  # once, one line
    assert flowkit.schedules.get("old-zone")["last_error"]["type"] == "ConfigError"
    with pytest.raises(flowkit.InvalidState, match=r"Schedule 'old-zone' cannot resume: unknown "
                                                   r"time zone 'US/Pacific-New'; use an IANA .*"
                                                   r"'UTC'; delete it and create it again\.$"):
        flowkit.schedules.resume("old-zone")
    flowkit.schedules.delete("old-zone")


def test_a_schedule_without_its_input_says_so_after_its_timing_is_checked():
    """A bad cron line or zone given without an input was reported as the input's fault,
    and the missing input as "Input must be a JSON object"."""
    with pytest.raises(flowkit.ConfigError, match="invalid cron line '99 \\* \\* \\* \\*'"):
        flowkit.schedules.create("simple", cron="99 * * * *")
    with pytest.raises(flowkit.ConfigError, match="unknown time zone 'Mars/X'"):
        flowkit.schedules.create("simple", cron="0 9 * * *", timezone="Mars/X")
    with pytest.raises(flowkit.ValidationError) as missing:
        flowkit.schedules.create("simple", cron="0 9 * * *")
    assert missing.value.fields == {"_schema": [
        "Input must be a JSON object, not null: give one ({} when every field has a default)."]}
    assert flowkit.schedules.list() == []


def _waiting_first_run(schedule_id: str, overlap: str) -> tuple[float, str]:
    """A 1-second schedule of ``approval`` with ``overlap``, and its first tick's run, which
    waits for a person: (that tick, the run's id)."""
    from flowkit.engine.reaper import fire_schedules

    schedule = flowkit.schedules.create("approval", every=1, input={"n": 1}, id=schedule_id,
                                        overlap=overlap)
    assert schedule["overlap"] == overlap
    tick = schedule["next_at"]
    [first] = fire_schedules(tick + 0.1)
    wait_until(lambda: flowkit.get_run(first).state == "waiting", WAIT, "the run to wait")
    return tick, first


def test_a_schedule_with_overlap_buffer_starts_one_held_back_tick_once_its_last_run_ends():
    """Temporal's BufferOne: the ticks while the run waits for a person start nothing then;
    once it ends, the next sweep starts one run (of the last tick held back), not one a tick."""
    from flowkit.engine.reaper import fire_schedules
    from flowkit.engine.schedules import idempotency_key

    tick, first = _waiting_first_run("buffers", "buffer")
    assert fire_schedules(tick + 1.1) == []  # held back
    assert fire_schedules(tick + 2.1) == []  # replaces the one held back: one, not two
    assert get_store().buffered_ticks() == {"buffers": tick + 2}
    flowkit.send_input(first, "approval", {"ok": True})
    assert flowkit.get_run(first).wait(WAIT).state == "succeeded"
    [second] = fire_schedules(tick + 2.5)  # no tick due: the held-back one starts
    held_back = idempotency_key(flowkit.schedules.get("buffers"), tick + 2)  # the last held
    assert flowkit.get_run(second).idempotency_key == held_back
    assert get_store().buffered_ticks() == {}
    assert fire_schedules(tick + 3.1) == []  # its run is live in turn: held back again
    flowkit.schedules.pause("buffers")  # a paused schedule starts nothing, held back or not
    assert get_store().buffered_ticks() == {}
    flowkit.cancel(second)
    assert fire_schedules(tick + 3.5) == []


def test_a_schedule_with_overlap_cancel_cancels_its_live_run_for_the_tick_s_own():
    """Temporal's CancelOther: a run still waiting at the next tick is cancelled, and the
    tick starts a fresh one."""
    from flowkit.engine.reaper import fire_schedules

    tick, first = _waiting_first_run("replaces", "cancel")
    [second] = fire_schedules(tick + 1.1)
    assert second != first
    assert flowkit.get_run(first).state == "cancelled"
    [said] = [e for e in flowkit.history(first) if e.type == "run.cancelled"]
    assert said.data["reason"] == (f"schedule replaces: its tick of {tick + 1:.3f} started a "
                                   "run in its place (overlap='cancel')")
    wait_until(lambda: flowkit.get_run(second).state == "waiting", WAIT, "the next to wait")
    flowkit.send_input(second, "approval", {"ok": True})
    assert flowkit.get_run(second).wait(WAIT).state == "succeeded"
    [third] = fire_schedules(tick + 2.1)  # the last run ended: nothing to cancel
    assert flowkit.get_run(second).state == "succeeded"
    # a sweep late by three ticks starts one run, its latest tick's (it started three and
    # cancelled two of them at once)
    [fourth] = fire_schedules(tick + 5.1)
    assert flowkit.get_run(third).state == "cancelled"
    assert flowkit.get_run(fourth).idempotency_key.endswith(f"{tick + 5:.3f}")
    made = {r.id for r in flowkit.list_runs(workflow="approval")}
    assert made - {first, second, third} == {fourth}
    flowkit.cancel(fourth)


def test_two_sweeps_at_once_start_one_run_of_a_schedule_that_forbids_overlap():
    """Two sweeps at once (two beats, or sweeps queued behind busy workers): one started the
    tick held back as the last run ended while the other claimed the next tick, read the last
    run ended too, and started a second run beside the first. Raced ten times."""
    from flowkit.engine.reaper import fire_schedules

    for n in range(10):
        tick, first = _waiting_first_run(f"raced-{n}", "buffer")
        assert fire_schedules(tick + 1.1) == []  # held back
        flowkit.send_input(first, "approval", {"ok": True})
        assert flowkit.get_run(first).wait(WAIT).state == "succeeded"
        together = threading.Barrier(2)
        started: list[str] = []

        def sweep(now: float, together: threading.Barrier = together,
                  started: list[str] = started) -> None:
            together.wait()
            started.extend(fire_schedules(now))

        # one sweep finds only the tick held back; the other that one and the next tick
        sweeps = [threading.Thread(target=sweep, args=(tick + late,)) for late in (1.5, 2.1)]
        for thread in sweeps:
            thread.start()
        for thread in sweeps:
            thread.join(WAIT)
        assert len(started) == 1, f"race {n}: {started} started at once"
        flowkit.schedules.delete(f"raced-{n}")
        flowkit.cancel(started[0])


def test_a_schedule_whose_lock_another_sweep_holds_is_taken_as_starting_a_run(monkeypatch):
    """Its lock held (by a sweep starting its run, or one that died holding it), the sweep
    waited 30 s, then raised: the other schedules' ticks it had claimed never started, and
    the rest of the reaper's sweep was skipped."""
    from flowkit.engine.reaper import fire_schedules
    from flowkit.store import store as stored

    monkeypatch.setattr(stored, "FIRING_WAIT_SECONDS", 0.2)  # 5 s: the test's patience
    store = get_store()
    ticks = {}
    for schedule_id, overlap in (("held-skip", "skip"), ("held-buffer", "buffer"),
                                 ("free", "allow")):
        ticks[schedule_id] = flowkit.schedules.create(
            "simple", every=1, input={"n": 1}, id=schedule_id, overlap=overlap)["next_at"]
    for schedule_id in ("held-skip", "held-buffer"):
        store.redis.set(store.keys.schedule_firing(schedule_id), "another sweep", px=60_000)
    [started] = fire_schedules(max(ticks.values()) + 0.5)
    assert flowkit.get_run(started).idempotency_key.startswith("schedule:free:")
    assert store.buffered_ticks() == {"held-buffer": ticks["held-buffer"]}  # held back
    store.redis.delete(store.keys.schedule_firing("held-buffer"))
    [buffered] = fire_schedules(max(ticks.values()) + 0.6)  # its lock free: it starts
    assert flowkit.get_run(buffered).idempotency_key.startswith("schedule:held-buffer:")


def test_a_schedule_with_overlap_skip_starts_no_run_while_its_last_one_is_live():
    """Every tick started its run while the last one still waited for a person: a run a
    minute piled up behind an approval."""
    from flowkit.engine.reaper import fire_schedules

    tick, first = _waiting_first_run("asks", "skip")
    assert fire_schedules(tick + 1.1) == []  # its run waits for a person: no second one
    assert fire_schedules(tick + 2.1) == []
    flowkit.send_input(first, "approval", {"ok": True})
    assert flowkit.get_run(first).wait(WAIT).state == "succeeded"
    [second] = fire_schedules(tick + 3.1)  # the last run ended: the next tick starts its own
    assert second != first
    flowkit.cancel(second)
    allowing = flowkit.schedules.create("approval", every=1, input={"n": 1}, id="asks-anyway")
    assert "overlap" not in allowing  # "allow", the default, is stored as before
    with pytest.raises(flowkit.ConfigError, match="overlap"):
        flowkit.Schedule(every=1, overlap="sometimes")
