"""Runs that pause inside a step (input, events, sleep), delayed starts, and what continues
them: each end to end on the real broker, with beat firing the timers."""

from __future__ import annotations

import time

import pytest

import flowkit
from flowkit import config, events
from flowkit.cli.live import RunView
from flowkit.engine.control import fire_due_timers
from flowkit.states import WaitOutcome
from flowkit.store import get_store
from tests import workflows as wf
from tests.conftest import counts, open_gate, reached_gate, wait_until

pytestmark = pytest.mark.integration
WAIT = 20


@pytest.fixture(autouse=True)
def _deployment(store, worker):
    """A clean store and the session's worker."""


def paused(run: flowkit.Run) -> events.Event:
    """The run.waiting event of ``run``, read from its stream as it comes."""
    for event in flowkit.follow(run.id):
        if event.type == events.RUN_WAITING:
            return event
    raise AssertionError(f"run {run.id} ended without waiting: {run.refresh().state}")


def types(run: flowkit.Run) -> list[str]:
    return [e.type for e in run.events()]


def test_a_step_waits_for_input_holding_nothing_and_the_input_resumes_it():
    run = wf.approval.start({"n": 1})
    waiting = paused(run)
    assert waiting.data["kind"] == "input" and waiting.data["name"] == "approval"
    assert waiting.data["prompt"] == "Publish this?"
    assert waiting.data["schema"]["properties"]["ok"]["type"] == "boolean"
    record = flowkit.get_run(run.id)
    assert record.state == "waiting" and [w["name"] for w in record.waits] == ["approval"]
    assert record.attempts == {"0:t.approve": 1}

    delivery = flowkit.send_input(run.id, "approval", {"ok": True, "note": "ship it"})
    assert delivery.outcome == WaitOutcome.RESUMED
    assert run.result(WAIT) == {"n": 1, "approved": True}
    assert types(run).count("run.waiting") == 1 and "run.resumed" in types(run)
    # the step ran again from its start; what it did inside a component was checkpointed
    assert counts(run) == {"approve": 2, "record": 2}  # t.record: once inside, once as step 1
    assert flowkit.get_run(run.id).waits == []


def test_a_run_whose_component_name_holds_a_slash_resumes_after_its_wait():
    """Its checkpoint's key (``0:t.billing: charge/card``) was cut at the "/" when the
    resume checked the run's steps against the workflow's: no such step, so every resume
    (an answer, a retry, a restart) failed the run as if a deploy had changed its steps."""
    run = wf.charged_approval.start({"n": 1})
    paused(run)
    assert flowkit.send_input(run.id, "approval", {"ok": True}).outcome == WaitOutcome.RESUMED
    assert run.result(WAIT) == {"n": 1, "charged": True, "approved": True}


def test_input_is_validated_answered_once_and_a_resend_changes_nothing():
    run = wf.approval.start({"n": 1})
    paused(run)
    with pytest.raises(flowkit.ValidationError) as bad:
        flowkit.send_input(run.id, "approval", {"ok": "perhaps"})
    assert "ok" in bad.value.fields
    with pytest.raises(flowkit.InvalidState):
        flowkit.send_input(run.id, "something-else", {"ok": True})
    assert flowkit.send_input(run.id, "approval", {"ok": False, "note": "no"}).outcome \
        == WaitOutcome.RESUMED
    assert flowkit.send_input(run.id, "approval", {"ok": False, "note": "no"}).outcome \
        == WaitOutcome.SAME
    # the same value with its keys in another order (a client that re-serialised): the same
    assert flowkit.send_input(run.id, "approval", {"note": "no", "ok": False}).outcome \
        == WaitOutcome.SAME
    # and the step gets the first answer as it was sent, its keys in their order
    assert get_store().answers_given(run.id, "input", "approval") == \
        ['{"input":{"ok":false,"note":"no"}}']
    with pytest.raises(flowkit.InvalidState):  # the first accepted value wins
        flowkit.send_input(run.id, "approval", {"ok": True})
    assert run.result(WAIT)["approved"] is False


def test_waiting_runs_hold_no_worker_slot(worker):
    """More waiting runs than the worker has slots, and other work still runs at once."""
    runs = [wf.approval.start({"n": i}) for i in range(12)]  # the worker has 4 slots
    for run in runs:
        paused(run)
    assert wf.simple.start({"n": 1}).result(WAIT) == {"n": 4}
    for run in runs:
        flowkit.send_input(run.id, "approval", {"ok": True})
    assert [run.result(WAIT)["approved"] for run in runs] == [True] * 12


def test_a_wait_past_its_timeout_raises_input_timeout_in_the_step(beat):
    run = wf.approval.start({"n": 1, "timeout": 1})
    paused(run)
    done = run.wait(WAIT)
    assert done.state == "failed" and done.error["type"] == "InputTimeout"
    resumed = [e for e in run.events() if e.type == "run.resumed"]
    assert [e.data["by"] for e in resumed] == ["timeout"]
    with pytest.raises(flowkit.InvalidState):  # too late now
        flowkit.send_input(run.id, "approval", {"ok": True})


def test_retrying_a_run_its_wait_s_timeout_failed_waits_again_with_a_fresh_deadline(beat):
    """The timeout was checkpointed as the wait's answer: the retried step raised it again
    at once, so a retry could never work."""
    run = wf.approval.start({"n": 1, "timeout": 3})
    paused(run)
    assert run.wait(WAIT).error["type"] == "InputTimeout"
    # an answer after the timeout fired says so (it said another value had answered first)
    with pytest.raises(flowkit.InvalidState, match=r"wait for input 'approval' timed out: its "
                                                   r"step got InputTimeout"):
        flowkit.send_input(run.id, "approval", {"ok": True})
    flowkit.retry(run.id)
    wait_until(lambda: flowkit.get_run(run.id).waits, WAIT, "the wait to open again")
    [wait] = flowkit.get_run(run.id).waits
    assert wait["expires_at"] > time.time()  # a deadline of its own, ahead
    flowkit.send_input(run.id, "approval", {"ok": True})
    assert run.result(WAIT)["approved"] is True
    assert [e.data["by"] for e in run.events() if e.type == "run.resumed"] == ["timeout", "input"]


def test_one_retry_opens_again_the_timed_out_waits_of_every_item():
    """Every item's wait timed out in one sweep; a retry dropped only the failed item's
    timeout, and the next item's failed the retried run again at once: one retry per item
    (per parallel branch) before the waits opened again."""
    run = wf.waiting_items_briefly.start({"n": 3})
    wait_until(lambda: len(flowkit.get_run(run.id).waits) == 3, WAIT, "every item's wait")
    fire_due_timers(time.time() + 61)  # as one sweep of beat's does, every deadline passed
    assert run.wait(WAIT).error["type"] == "InputTimeout"
    wait_until(lambda: not get_store().live_leases(run.id, time.time()), WAIT,
               "the other items to raise their timeouts too")  # else the retry is refused
    flowkit.retry(run.id)
    wait_until(lambda: len(flowkit.get_run(run.id).waits) == 3, WAIT,
               "every item's wait to open again")
    for i in range(3):
        flowkit.send_input(run.id, f"item-{i}", {"value": i + 1})
    assert run.result(WAIT) == {"total": 6}


def test_items_waiting_under_one_name_are_answered_by_step_each_and_a_resend_is_the_same():
    """Fan-out items asking under one name: an answer went to whichever wait Redis listed
    first (the dashboard's form for item 0 answered item 1), and a resend of it answered
    the next item instead of being the same."""
    run = wf.same_named_items.start({"n": 3})
    wait_until(lambda: len(flowkit.get_run(run.id).waits) == 3, WAIT, "every item's wait")
    steps = {w["prompt"]: w["step"] for w in flowkit.get_run(run.id).waits}
    for vague in (None, ""):  # "" named no step: it slipped past the check and the schema
        with pytest.raises(flowkit.ValidationError) as ambiguous:
            flowkit.send_input(run.id, "value", {"value": 1}, step=vague)
    assert ambiguous.value.fields == {"step": [
        f"Several steps of run {run.id} wait for input 'value': "
        f"{', '.join(sorted(steps.values()))}; pass the step whose wait this answers."]}
    # a step that does not wait: the 409 said "does not wait for input 'value': it waits
    # for input 'value'", naming no step
    with pytest.raises(flowkit.ValidationError) as wrong:
        flowkit.send_input(run.id, "value", {"value": 1}, step="9:nosuch")
    assert wrong.value.fields == {"step": [
        f"Step 9:nosuch of run {run.id} does not wait for input 'value': steps "
        f"{', '.join(sorted(steps.values()))} do; pass one of them."]}
    for i in (2, 0, 1):
        step = steps[f"item {i}?"]
        first = flowkit.send_input(run.id, "value", {"value": 10 ** i}, step=step)
        assert first.outcome in (WaitOutcome.DELIVERED, WaitOutcome.RESUMED)
        assert flowkit.send_input(run.id, "value", {"value": 10 ** i}, step=step).outcome \
            == WaitOutcome.SAME  # a resend: not the next item's answer
        assert step not in {w["step"] for w in flowkit.get_run(run.id).waits}
    assert run.result(WAIT) == {"total": 111}
    resumed = {e.data["step"] for e in run.events() if e.type == events.RUN_RESUMED}
    assert resumed == set(steps.values())


def test_an_input_past_its_wait_s_timeout_is_refused_before_beat_fires_it():
    """Up to a sweep late, an answer was taken or refused by chance (no beat runs here: the
    timeout has not fired, and the answer is still refused)."""
    run = wf.approval.start({"n": 1, "timeout": 0.5})
    paused(run)
    [wait] = flowkit.get_run(run.id).waits
    time.sleep(max(0.0, wait["expires_at"] - time.time()) + 0.05)  # past the deadline
    with pytest.raises(flowkit.InvalidState, match=r"wait for input 'approval' timed out "
                                                   r"[0-9.]+s ago: its step gets InputTimeout"):
        flowkit.send_input(run.id, "approval", {"ok": True})
    assert flowkit.get_run(run.id).state == "waiting"  # the timeout's answer is beat's to give
    flowkit.cancel(run.id)


def test_an_event_past_its_wait_s_timeout_wakes_nothing_and_the_step_gets_event_timeout():
    """An input past the deadline was refused, an event answered the wait all the same (up
    to a sweep late): the step got the event instead of its EventTimeout."""
    key = f"late-{time.time_ns()}"
    run = wf.payment.start({"order": key, "timeout": 0.5})
    paused(run)
    [wait] = flowkit.get_run(run.id).waits
    time.sleep(max(0.0, wait["expires_at"] - time.time()) + 0.05)  # past the deadline
    assert flowkit.send_event(f"payment:{key}", {"amount": 1}) == 0
    assert flowkit.get_run(run.id).state == "waiting"  # the timeout's answer is beat's to give
    fire_due_timers()  # as beat's sweep does
    done = run.wait(WAIT)
    assert done.state == "failed" and done.error["type"] == "EventTimeout"


def test_an_event_wakes_every_run_waiting_for_it():
    runs = [wf.payment.start({"order": 7}) for _ in range(3)]
    for run in runs:
        paused(run)
    assert flowkit.send_event("payment:7", {"amount": 42}) == 3
    assert [run.result(WAIT)["paid"] for run in runs] == [{"amount": 42}] * 3
    assert flowkit.send_event("payment:7", {"amount": 1}) == 0  # nobody waits any more


def test_a_run_waiting_for_an_event_past_the_retention_is_still_woken_by_it():
    """Its wait's index expired a retention after the wait began, and the event woke
    nobody: the run waited for good. Beat's retention task indexes it again."""
    from flowkit.engine import reaper

    run = wf.payment.start({"order": 9})
    paused(run)
    get_store().redis.delete(get_store().keys.wakers("payment:9"))  # as a retention later
    retention = get_store().settings.retention_seconds
    reaper.trim_indexes(now=time.time() + retention)  # beat's retention task, then
    assert flowkit.send_event("payment:9", {"amount": 3}) == 1
    assert run.result(WAIT)["paid"] == {"amount": 3}


def test_a_step_replayed_after_its_wait_finds_its_answer_behind_a_sub_step_s_own_calls():
    """The sub-step's checkpoint answers the replay without running its body, whose two
    calls had taken the step's numbers: the wait's key moved, and the person was asked
    again, for ever."""
    run = wf.sub_step_then_wait.start({})
    paused(run)
    flowkit.send_input(run.id, "approve", "yes")
    assert run.result(WAIT) == {"found": ["x1!", "x2!"], "answer": "yes", "b": "b!"}
    keys = set(get_store().checkpoints(run.id))
    step = "0:t.looks_up_then_asks"
    assert {f"{step}/0:t.looks_up/0:t.search", f"{step}/0:t.looks_up/1:t.search",
            f"{step}/2:t.search"} <= keys
    assert [e.type for e in run.events()].count("run.waiting") == 1


def test_a_run_made_before_nested_keys_keeps_its_step_s_flat_count(store):
    """Its checkpoints were written on the step's count: read under the sub-step, a run
    mid-step at the upgrade would have met other keys."""
    run = wf.sub_step_ran_on.start({}, delay=3600)
    store.redis.hdel(store.keys.run(run.id), "sub_step_keys")  # as an older release made it
    fire_due_timers(time.time() + 3601)
    assert run.result(WAIT) == {"b": "b!", "c": "c!"}
    step = "0:t.researches_then_searches"
    assert f"{step}/1:t.search" in set(store.checkpoints(run.id))  # a1, on the step's count
    assert not any("/0:t.research/" in key for key in store.checkpoints(run.id))


def test_an_event_key_too_long_to_send_is_refused_by_the_wait_and_the_sender():
    too_long = "x" * 201  # POST /events/<key> refuses it: no wait may hang on it
    run = wf.payment.start({"order": too_long})
    done = run.wait(WAIT)
    assert done.state == "failed" and done.error["type"] == "ValidationError"
    assert "1 to 200 characters of text, not 209 characters" in done.error["message"]
    with pytest.raises(flowkit.ValidationError) as refused:
        flowkit.send_event(f"payment:{too_long}", {"amount": 1})
    assert refused.value.fields == {"key": ["1 to 200 characters."]}
    with pytest.raises(flowkit.ValidationError):
        flowkit.send_event("", None)


def test_an_event_sent_before_the_wait_counts_within_its_look_back():
    flowkit.send_event("payment:8", {"amount": 5})
    early = wf.payment.start({"order": 8, "lookback": 60})
    assert early.result(WAIT)["paid"] == {"amount": 5}
    assert "run.waiting" not in types(early)  # it never paused
    late = wf.payment.start({"order": 8})  # no look-back: it waits for the next one
    paused(late)
    assert flowkit.send_event("payment:8", {"amount": 6}) == 1
    assert late.result(WAIT)["paid"] == {"amount": 6}


def test_with_no_sent_event_kept_an_event_still_wakes_its_waits_and_leaves_no_stream(
        monkeypatch):
    """FLOWKIT_EVENT_LOOKBACK_SECONDS=0: each key sent to kept a ~4.5 KB stream an hour."""
    monkeypatch.setattr(config, "_settings",
                        config.get_settings().replace(event_lookback_seconds=0))
    store = get_store()
    assert flowkit.send_event("payment:81", {"amount": 5}) == 0
    assert not store.redis.exists(store.keys.sent("payment:81"))
    looking_back = wf.payment.start({"order": 81, "lookback": 60})
    paused(looking_back)  # nothing kept to look back on: it waits for the next one
    assert flowkit.send_event("payment:81", {"amount": 6}) == 1
    assert looking_back.result(WAIT)["paid"] == {"amount": 6}
    assert not store.redis.exists(store.keys.sent("payment:81"))
    with pytest.raises(flowkit.ConfigError, match="FLOWKIT_EVENT_LOOKBACK_SECONDS "
                       r"\(event_lookback_seconds=\) is 0 or more, not -1"):
        config.get_settings().replace(event_lookback_seconds=-1)


def test_an_event_wait_times_out(beat):
    run = wf.payment.start({"order": 9, "timeout": 1})
    assert run.wait(WAIT).error["type"] == "EventTimeout"


def test_a_durable_sleep_holds_no_worker_and_ends_on_time(beat):
    began = time.time()
    run = wf.dozing.start({"seconds": 1.5})
    waiting = paused(run)
    assert waiting.data["kind"] == "sleep" and waiting.data["expires_at"] >= began + 1.5
    assert flowkit.get_run(run.id).state == "waiting"
    done = run.wait(WAIT)
    assert done.state == "succeeded" and done.finished_at >= began + 1.5
    assert [e.data["by"] for e in run.events() if e.type == "run.resumed"] == ["timer"]


def test_a_delayed_start_is_scheduled_then_runs(beat):
    began = time.time()
    run = wf.simple.start({"n": 1}, delay=1.5)
    assert run.state == "scheduled" and run.start_at >= began + 1.5
    assert types(run) == ["run.scheduled"]
    done = run.wait(WAIT)
    assert done.state == "succeeded" and done.started_at >= began + 1.5


def test_a_scheduled_run_and_a_waiting_run_can_be_cancelled():
    # timers a minute away, fired below as the reaper would fire them then: a 1 s timer
    # raced the worker reaching the wait on a loaded machine
    scheduled = wf.simple.start({"n": 1}, delay=60)
    waiting = wf.approval.start({"n": 1, "timeout": 60})
    paused(waiting)
    assert flowkit.cancel(scheduled.id).state == "cancelled"
    assert flowkit.cancel(waiting.id).state == "cancelled"
    fired = fire_due_timers(time.time() + 120)
    assert scheduled.id not in fired and waiting.id not in fired
    assert scheduled.refresh().state == waiting.refresh().state == "cancelled"
    assert "run.started" not in types(scheduled)
    assert types(waiting).count("run.resumed") == 0


def test_a_waiting_branch_lets_the_others_finish_and_joins_when_answered():
    run = wf.waiting_branches.start({"n": 1})
    seen: set[str] = set()
    for event in flowkit.follow(run.id):  # one branch pauses, the other finishes meanwhile
        if event.type == "run.waiting":
            seen.add("paused")
        if event.type == "step.completed" and event.data["step"] == "0.1.1:t.double":
            seen.add("other branch done")
        if len(seen) == 2:
            break
    flowkit.send_input(run.id, "approval", {"ok": True})
    assert run.result(WAIT) == {"outputs": [{"n": 1, "approved": True}, {"n": 4}]}
    assert counts(run)["add_one"] == 1 and counts(run)["double"] == 1  # never sent again


def test_fan_out_items_wait_on_their_own_and_the_join_has_every_output():
    run = wf.waiting_items.start({"n": 3})
    for event in flowkit.follow(run.id):  # every item paused
        if event.type == "run.waiting" and event.data["name"] == "item-2":
            break
    for i in (2, 0):  # answered out of order, one at a time
        flowkit.send_input(run.id, f"item-{i}", {"value": 10 * (i + 1)})
    # the answered items go on at once; item-1 pauses again, saying nothing new
    done: set[str] = set()
    for event in flowkit.follow(run.id):
        if event.type == "step.completed" and "ask_item" in event.data["step"]:
            done.add(event.data["step"])
        if len(done) == 2:
            break
    assert done == {"1[0]:t.ask_item", "1[2]:t.ask_item"}
    wait_until(lambda: flowkit.get_run(run.id).state == "waiting", 10, "item-1 waiting again")
    waits = [e for e in run.events() if e.type == "run.waiting"]
    assert sorted(e.data["name"] for e in waits) == ["item-0", "item-1", "item-2"]
    flowkit.send_input(run.id, "item-1", {"value": 20})
    assert run.result(WAIT) == {"total": 10 + 20 + 30}


#: The approval workflow as a deploy changed it while runs waited: a step added before the
#: waiting one (step keys are positional: "0:t.approve" is now "1:t.approve").
changed_approval = flowkit.Workflow("t.approval_changed", [wf.record, wf.approve, wf.record])


def test_a_run_resumed_on_a_changed_step_list_fails_saying_so_instead_of_asking_again(
        monkeypatch):
    """The answered run was resumed on the new steps: it ran the added step, then asked the
    person again under the moved step's key (the answer and the step's checkpointed calls
    left under the old one), its side effects done twice."""
    run = wf.approval.start({"n": 1})
    paused(run)
    before = counts(run)
    monkeypatch.setattr(wf.approval, "root", changed_approval.root)  # the deploy
    flowkit.send_input(run.id, "approval", {"ok": True})
    done = run.wait(20)
    assert done.state == "failed"
    assert "changed since the run started" in done.error["message"]
    assert "no step 0:t.approve" in done.error["message"]
    assert "Workflow(version=..., queue=...)" in done.error["message"]
    assert counts(run) == before, "a step ran again on the changed step list"
    assert [e.type for e in run.events()].count("run.waiting") == 1, "it asked again"


@flowkit.component(name="t.await_twice")
def await_twice(data: dict) -> dict:
    first = flowkit.wait_for_event(data["key"], lookback=600)
    second = flowkit.wait_for_event(data["key"], lookback=600)
    return {"first": first, "second": second}


awaiting_twice = flowkit.Workflow("t.awaiting_twice", [await_twice])


def test_an_event_answers_one_wait_of_a_run_not_each_later_one_that_looks_back():
    """One event sent once answered both waits (the look-back found it again), so a loop
    over wait_for_event took the same message again and again."""
    key = f"tick:{time.time_ns()}"
    flowkit.send_event(key, {"n": 1})  # before the run: the first wait looks back to it
    run = awaiting_twice.start({"key": key})
    waiting = paused(run)  # the second wait: the event was the first one's
    assert waiting.data["name"] == key
    assert flowkit.send_event(key, {"n": 2}) == 1
    assert run.result(20) == {"first": {"n": 1}, "second": {"n": 2}}


def test_events_sent_between_two_waits_of_a_run_are_each_taken_in_order():
    """A look-back took the newest event: of two messages sent while a chat loop's step
    worked, its next wait took the second and the first was never seen."""
    key = f"chat:{time.time_ns()}"
    flowkit.send_event(key, {"n": 1})
    flowkit.send_event(key, {"n": 2})
    run = awaiting_twice.start({"key": key})
    wait_until(lambda: flowkit.get_run(run.id).state in ("succeeded", "waiting", "failed"),
               20, "the run to take its events or wait for one")
    done = flowkit.get_run(run.id)
    assert done.state == "succeeded", done.waits  # it waited: the first message was skipped
    assert done.output == {"first": {"n": 1}, "second": {"n": 2}}


@flowkit.component(name="t.sleeps_no_time")
def sleeps_no_time(data: dict) -> dict:
    flowkit.sleep(0)
    flowkit.sleep(-5)
    flowkit.sleep_until(time.time() - 60)
    return {"after": flowkit.wait_for_input("after")}


sleeping_no_time = flowkit.Workflow("t.sleeping_no_time", [sleeps_no_time])


@flowkit.component(name="t.awaits_then_looks_back")
def awaits_then_looks_back(data: dict) -> dict:
    first = flowkit.wait_for_event(data["key"])
    second = flowkit.wait_for_event(data["key"], lookback=600)
    return {"first": first, "second": second}


awaiting_then_looking_back = flowkit.Workflow("t.awaiting_then_looking_back",
                                              [awaits_then_looks_back])


def test_a_look_back_after_a_wait_that_paused_takes_nothing_sent_before_that_wait():
    """Events sent before a wait that does not look back are behind the run: a later wait
    that looked back handed them out (a stale status, for a key that carries one)."""
    key = f"status:{time.time_ns()}"
    flowkit.send_event(key, {"n": 1})
    flowkit.send_event(key, {"n": 2})
    run = awaiting_then_looking_back.start({"key": key})
    first = paused(run)
    assert "floor" not in first.data and "floor" not in flowkit.get_run(run.id).waits[0]
    assert flowkit.send_event(key, {"n": 3}) == 1
    wait_until(lambda: [e.type for e in run.events()].count("run.waiting") == 2, WAIT,
               "the look-back wait to pause: nothing left to take")
    assert flowkit.send_event(key, {"n": 4}) == 1
    assert run.result(WAIT) == {"first": {"n": 3}, "second": {"n": 4}}


def test_a_newer_event_never_delivered_is_not_put_behind_the_run_by_its_wait_s_floor():
    """Two senders at once, both events recorded before the wait began (its floor the
    newer one's id), the older one's sender delivering it: the newer one, whose sender found
    no waiting run, was behind the floor, and lost to every later look-back."""
    from flowkit.engine import control
    from flowkit.serialization import dumps

    key = f"status:{time.time_ns()}"
    store = get_store()
    older = store.record_sent(key, '{"n": 1}', time.time(), 3600)  # sender A, then B,
    store.record_sent(key, '{"n": 2}', time.time(), 3600)  # whose delivery found no run
    run = awaiting_then_looking_back.start({"key": key})
    paused(run)
    answer = dumps({"event": {"n": 1}, "sent_at": time.time(), "sent_id": older})
    for run_id, wait_key in store.wakers(key):  # sender A delivers, as send_event does
        resumed = events.make(events.RUN_RESUMED, run_id, by="event", name=key)
        outcome, gen = store.deliver(run_id, "key", wait_key, answer, time.time(), resumed)
        store.drop_waker(key, run_id, wait_key)
        control.resume(control.Run.load(run_id), gen)
    assert run.result(WAIT) == {"first": {"n": 1}, "second": {"n": 2}}


def test_of_two_events_sent_at_once_the_one_whose_delivery_lost_the_race_is_not_lost():
    """Two senders at once: each records its event, then takes the key's waiting runs; the
    second sender took them first and answered the wait with the newer event, and the run's
    next wait looked back only past that one: the older event was skipped for good."""
    key = f"chat:{time.time_ns()}"
    run = awaiting_twice.start({"key": key})
    paused(run)
    store = get_store()
    store.record_sent(key, '{"n": 1}', time.time(), 3600)  # sender 1, before it delivers
    assert flowkit.send_event(key, {"n": 2}) == 1  # sender 2 delivers first
    assert run.result(WAIT) == {"first": {"n": 2}, "second": {"n": 1}}


def test_a_sleep_already_due_does_not_pause_and_keeps_its_place_in_the_step():
    """sleep(0) and sleep(-5) paused the run until beat fired their timers (never, without
    beat: this session runs none), though the README says they do not pause."""
    run = sleeping_no_time.start({})
    waiting = paused(run)
    assert waiting.data["name"] == "after"  # the one wait the run says it waits for
    assert [e.data["name"] for e in run.events() if e.type == "run.waiting"] == ["after"]
    step = "0:t.sleeps_no_time"
    assert {f"{step}/{n}:wait:sleep:sleep" for n in range(3)} <= set(
        get_store().checkpoints(run.id))  # each sleep kept its key: a replay numbers alike
    flowkit.send_input(run.id, "after", 1)
    assert run.result(WAIT) == {"after": 1}


def test_a_sleep_that_paused_waits_for_its_timer_though_its_deadline_passed_meanwhile():
    """Run again when the other branch's input came, past its deadline but before beat's
    sweep, the sleeping branch took its sleep as done and went on, leaving its wait and its
    timer open: the run turned waiting with nothing to wait for, and the stale timer
    opened a needless generation when it fired."""
    wake = time.time() + 0.5
    run = wf.sleeping_and_asking.start({"wake": wake})
    wait_until(lambda: len(flowkit.get_run(run.id).waits or []) == 2, WAIT, "both waiting")
    time.sleep(max(0.0, wake - time.time()) + 0.05)  # past the deadline; no beat runs here
    flowkit.send_input(run.id, "a", 1)
    wait_until(lambda: (r := flowkit.get_run(run.id)).state == "waiting" and
               [w["kind"] for w in r.waits or []] == ["sleep"], WAIT,
               "the sleeping branch to wait for its timer again")
    fire_due_timers()  # as beat's sweep does
    assert run.result(WAIT) == {"slept": True, "a": 1}
    store = get_store()
    assert not store.redis.hlen(store.keys.waits(run.id))
    assert [e.data["by"] for e in run.events() if e.type == "run.resumed"] == ["input", "timer"]


def test_an_answer_given_while_another_branch_works_goes_on_when_that_branch_pauses():
    """Branch b paused after branch a's answer came: its pause opened the run's next
    generation but nothing enqueued it, and the run sat queued with no message until the
    reaper took it for stranded (never, without beat: this session runs none)."""
    run = wf.answered_while_working.start({})
    reached_gate(run, "works")
    wait_until(lambda: flowkit.get_run(run.id).waits, WAIT, "branch a waiting")
    assert flowkit.send_input(run.id, "a", 1).outcome == WaitOutcome.DELIVERED  # b works
    open_gate(run, "works")
    wait_until(lambda: [w["name"] for w in flowkit.get_run(run.id).waits or []] == ["b"]
               and "0.0:t.asks_a" in get_store().checkpoints(run.id), WAIT,
               "branch a to go on once branch b paused")
    flowkit.send_input(run.id, "b", 2)
    assert run.result(WAIT) == {"a": 1, "b": 2}
    assert run.refresh().restarts == 0


@flowkit.component(name="t.item_asks")
def item_asks(data: dict) -> dict:
    return {"n": data["n"], "answer": flowkit.wait_for_input(f"go-{data['n']}")}


@flowkit.component(name="t.item_loop")
def item_loop(n: int) -> dict:
    return flowkit.continue_with(item_asks, {"n": n})  # each item an agent loop that asks


@flowkit.component(name="t.two_items")
def two_items(data: dict) -> list:
    return [1, 2]


looping_items = flowkit.Workflow("t.looping_items", [two_items, flowkit.fan_out(item_loop)])


def test_a_run_whose_fan_out_items_continued_resumes_after_its_answers():
    """Its items' continuations ("1[0]+1:...") are steps of the workflow: the check for a
    changed step list must not take them for moved ones."""
    run = looping_items.start({})
    wait_until(lambda: len(flowkit.get_run(run.id).waits or []) == 2, 20, "both items asking")
    flowkit.send_input(run.id, "go-1", "yes")
    flowkit.send_input(run.id, "go-2", "no")
    assert run.result(20) == [{"n": 1, "answer": "yes"}, {"n": 2, "answer": "no"}]


@flowkit.component(name="t.chat_loop")
def chat_loop(data: dict) -> dict:
    return {"got": [flowkit.wait_for_event(data["key"], lookback=60)
                    for _ in range(data["n"])]}


chatting = flowkit.Workflow("t.chatting", [chat_loop])


def test_one_sender_s_events_reach_a_looking_back_loop_in_the_order_sent():
    """An event sent as the step indexed its wait answered it early (deliver.lua), and won
    its checkpoint over the older one the wait's look-back found: the loop got them out of
    order (``[..., 9, 13, 10, 11, 12, ...]``) though one sender sent them one after another."""
    key, n = f"chat:{time.time_ns()}", 20
    runs = [chatting.start({"key": key, "n": n}) for _ in range(4)]
    for run in runs:
        paused(run)
    for i in range(n):  # one sender: each send returns before the next begins
        flowkit.send_event(key, i)
    assert [run.result(WAIT)["got"] for run in runs] == [list(range(n))] * 4


def test_a_resume_owed_to_a_run_whose_record_cannot_be_read_stops_no_sweep(caplog):
    """Beat's sweep sends owed resumes first: one that raised there stopped every sweep for
    good (no restart, no timer, no schedule), the bad entry never settled."""
    import logging

    from flowkit.engine import reaper

    store = get_store()
    broken = wf.approval.start({"n": 1})
    paused(broken)
    store.redis.hset(store.keys.run(broken.id), "gen", "not a number")  # a damaged record
    store.owe_resume(broken.id, 1)
    with caplog.at_level(logging.ERROR, logger="flowkit"):
        assert reaper.sweep()["resumed"] == []
    assert f"the resume owed to run {broken.id} (generation 1) is dropped" in caplog.text
    assert store.owed_resumes() == []
    assert "timers" in reaper.sweep()  # the next sweep goes through too


def test_a_sweep_pass_that_fails_stops_none_of_the_others(caplog):
    """A delayed start whose record cannot be read raised in the timers pass, and every
    sweep stopped there for as long as it stayed: no schedule fired, no slot was given back,
    no sweep was recorded (flowkit doctor: beat not sweeping)."""
    import logging

    from flowkit.engine import reaper

    store = get_store()
    damaged = wf.simple.start({"n": 1}, delay=60)
    store.redis.hset(store.keys.run(damaged.id), "gen", "not a number")
    flowkit.schedules.create("simple", every=3600, input={"n": 2}, id="beside-a-damaged-run")
    definition, tick = store.schedule("beside-a-damaged-run")
    before = (store.last_sweep() or {}).get("at", 0)
    with caplog.at_level(logging.ERROR, logger="flowkit"):
        report = reaper.sweep(tick + 0.5)  # an hour on: the start and one tick are due
    assert report["failed"] == ["timers"]
    assert "its timers pass failed; the other passes go on" in caplog.text
    [started] = report["scheduled"]
    assert flowkit.get_run(started).wait(WAIT).state == "succeeded"
    assert store.last_sweep()["at"] > before
    flowkit.schedules.delete("beside-a-damaged-run")


@pytest.mark.parametrize("fail_once", [False, True], ids=["resumed", "resumed-then-retried"])
def test_a_resumed_step_does_not_stream_again_what_it_replays_and_keeps_its_text(
        worker, fail_once):
    """A step streams, calls a sub-step that streams (an LLM call), and waits; resumed, it
    runs again from its start. Its direct chunks were sent again (a reader showed them
    twice), and the browser client and the CLI dropped the paused attempt's text, the
    sub-step's with it: replayed from its checkpoint, it does not stream again."""
    run = wf.streaming_asks.start({"topic": "x", "fail_once": fail_once})
    paused(run)
    history = answered_both(run)
    chunks = [(e.data["attempt"], e.data["chunk"]) for e in history
              if e.type == events.STEP_OUTPUT]
    dropped = events.superseded_attempts(history)
    kept = "".join(chunk for attempt, chunk in chunks if ("0:t.streams_then_asks", attempt)
                   not in dropped)
    assert kept == "Intro. Draft. Sent. Done."
    view = RunView(run.id)  # flowkit follow's live view: it showed " Done." alone
    for event in history:
        view.feed(event.to_dict())
    assert view.steps["0:t.streams_then_asks"].text == kept
    waits = [e.data for e in history if e.type == events.RUN_WAITING]
    assert [(w["name"], w["attempt"]) for w in waits] == (
        [("ok", 1), ("final", 3)] if fail_once else [("ok", 1), ("final", 2)])
    if fail_once:  # the failed attempt's "Sent." is dropped; its retry sends it again
        assert chunks == [(1, "Intro. "), (1, "Draft. "), (2, "Sent."), (3, "Sent."),
                          (4, " Done.")]
        assert dropped == {("0:t.streams_then_asks", 2)}
    else:
        assert chunks == [(1, "Intro. "), (1, "Draft. "), (2, "Sent."), (3, " Done.")]
        assert dropped == set()


def answered_both(run: flowkit.Run) -> list[events.Event]:
    """Answer streaming_asks's two waits, in turn; its history once it succeeded."""
    flowkit.send_input(run.id, "ok", True)
    wait_until(lambda: any(e.type == events.RUN_WAITING and e.data["name"] == "final"
                           for e in run.events()), 20, "the second wait")
    flowkit.send_input(run.id, "final", "yes")
    assert run.result(20) == {"text": "draft of x", "ok": True, "final": "yes"}
    return run.events()


def test_a_retry_after_a_wait_timed_out_does_not_stream_again_what_it_replays(worker):
    """The wait's timeout failed the run; retried, its step runs again from its start up to
    the wait, opened anew. Its text up to there was sent again (the retry forgot the timed
    out wait, the pause point with it), and every reader showed it twice."""
    run = wf.streaming_asks.start({"topic": "x", "timeout": 60})
    paused(run)
    fire_due_timers(time.time() + 61)
    assert run.wait(WAIT).error["type"] == "InputTimeout"
    flowkit.retry(run.id)
    wait_until(lambda: flowkit.get_run(run.id).waits, WAIT, "the wait to open again")
    history = answered_both(run)
    chunks = [(e.data["attempt"], e.data["chunk"]) for e in history
              if e.type == events.STEP_OUTPUT]
    # 2 and 3 met the timeout; 4, the retry's, replays up to the wait and pauses there
    assert chunks == [(1, "Intro. "), (1, "Draft. "), (5, "Sent."), (6, " Done.")]
    dropped = events.superseded_attempts(history)
    kept = "".join(chunk for attempt, chunk in chunks if ("0:t.streams_then_asks", attempt)
                   not in dropped)
    assert kept == "Intro. Draft. Sent. Done."
    view = RunView(run.id)
    for event in history:
        view.feed(event.to_dict())
    assert view.steps["0:t.streams_then_asks"].text == kept


def test_a_step_s_retry_budget_counts_its_failures_before_a_wait_and_a_retry_renews_it(worker):
    """Allowed 2 attempts, it failed once, waited, and failed twice more after the answer:
    each execution of a step had the whole budget (after a wait, or a worker killed during
    its backoff), each a paid call or a side effect. A retry of the failed run asks for it
    again, whole."""
    run = wf.budgeted_asks.start({})
    paused(run)
    flowkit.send_input(run.id, "go", True)
    assert run.wait(20).state == "failed"
    assert counts(run)["fails_then_asks"] == 3  # 1 failure, the wait, 1 failure: 2 in all
    retried = [e for e in run.events() if e.type == events.STEP_RETRYING]
    assert [e.data["attempt"] for e in retried] == [1]
    flowkit.retry(run.id)
    assert run.wait(20).state == "failed"
    assert counts(run)["fails_then_asks"] == 5  # the retry's two attempts


def test_a_replay_up_to_a_wait_inside_a_checkpointed_sub_step_ends_at_that_sub_step(worker):
    """The step paused at a wait inside its sub-step; the sub-step completed since, so a
    later attempt replays it from its checkpoint and never meets the wait: every chunk of
    that attempt was held back as replayed, and the step's text after the wait was lost."""
    run = wf.sub_step_asks.start({"topic": "x"})
    paused(run)
    flowkit.send_input(run.id, "ok", True)
    assert run.result(20) == {"ok": True}
    history = run.events()
    chunks = [(e.data["attempt"], e.data["chunk"]) for e in history
              if e.type == events.STEP_OUTPUT]
    assert chunks == [(1, "Asked. "), (2, "Done."), (3, "Done.")]  # 2 failed: dropped
    dropped = events.superseded_attempts(history)
    assert "".join(c for a, c in chunks if ("0:t.asks_in_a_sub_step", a) not in dropped) == (
        "Asked. Done.")


def test_fan_out_items_paused_again_after_a_sibling_s_answer_do_not_stream_twice(worker):
    """An answer resumes the run: the items still waiting run again and pause again at the
    same wait (its first pause's spec stays, no new run.waiting), and sent their text again."""
    run = wf.telling_items.start({"n": 3})
    wait_until(lambda: len([e for e in run.events() if e.type == events.RUN_WAITING]) == 3,
               20, "every item to pause")
    for i in range(3):
        flowkit.send_input(run.id, f"item-{i}", {"value": i + 1})
        if i < 2:  # the others run again, and pause again
            wait_until(lambda: flowkit.get_run(run.id).state == "waiting", 20,
                       "the other items waiting again")
    assert run.result(WAIT) == {"total": 6}
    chunks = sorted(e.data["chunk"] for e in run.events() if e.type == events.STEP_OUTPUT)
    assert chunks == ["item 0. ", "item 1. ", "item 2. "]
