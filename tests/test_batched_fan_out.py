"""fan_out(component, batch=n): n items per Celery task, each item still its own step."""

from __future__ import annotations

import time

import pytest

import flowkit
from flowkit.engine import trace
from flowkit.engine.paths import item_key
from flowkit.store import get_store
from tests import workflows as wf
from tests.conftest import counts, open_gate, wait_until

pytestmark = pytest.mark.integration
WAIT = 20


@pytest.fixture(autouse=True)
def _deployment(store, worker):
    """Every test here runs against a clean store and the session's worker."""


def completed_steps(run: flowkit.Run) -> list[str]:
    return [e.data["step"] for e in run.events() if e.type == "step.completed"]


def test_a_batched_fan_out_runs_each_item_as_its_own_step_and_gathers_in_order():
    run = wf.batched.start({"n": 5})  # batches of 2, 2 and 1
    assert run.result(WAIT) == {"total": 0 + 1 + 4 + 9 + 16}
    items = [k for k in completed_steps(run) if "[" in k]
    assert sorted(items) == [item_key("1", i, "t.square") for i in range(5)]
    started = [e.data for e in run.events() if e.type == "step.started" and "[" in e.data["step"]]
    assert sorted(e["step"] for e in started) == sorted(items)
    assert all(e["attempt"] == 1 for e in started)
    spans = {s["step"]: s for s in trace.read(run.id) if s["kind"] == "step" and "[" in s["step"]}
    assert sorted(spans) == sorted(items)
    assert {s["status"] for s in spans.values()} == {"ok"}
    assert spans[item_key("1", 3, "t.square")]["input"] == 3
    assert counts(run) == {"split": 1, **{f"square{i}": 1 for i in range(5)}, "total": 1}


def test_the_items_of_a_batch_run_at_the_same_time():
    run = wf.meeting_in_batches.start({"n": 3})
    # each item waits at the gate before it returns: had they run one after the other,
    # the first would wait alone and the other two never start
    r = get_store().redis
    wait_until(lambda: r.llen(f"waiting:{run.id}:meeting") == 3, WAIT, "all three items waiting")
    for _ in range(3):
        open_gate(run, "meeting")
    assert run.result(WAIT) == [1, 2, 3]


def test_a_redelivered_batch_leaves_items_in_flight_alone():
    run = wf.meeting_in_batches.start({"n": 3})
    r = get_store().redis
    wait_until(lambda: r.llen(f"waiting:{run.id}:meeting") == 3, WAIT, "all three items waiting")
    from tests.app import app  # the same batch message again, as after a broker redelivery

    app.send_task("flowkit.fan_out_batch", args=([0, 1, 2],),
                  kwargs={"run_id": run.id, "base": "1", "first": 0, "gen": run.refresh().gen,
                          "component": "t.meeting"})
    for _ in range(3):
        open_gate(run, "meeting")
    assert run.result(WAIT) == [1, 2, 3]
    assert counts(run) == {"split": 1, "meeting0": 1, "meeting1": 1, "meeting2": 1}


def test_a_failed_item_fails_the_run_and_a_retry_runs_only_that_item():
    run = wf.breaking_in_batches.start({"n": 5})
    with pytest.raises(flowkit.StepError, match="item 3 breaks") as err:
        run.result(WAIT)
    assert err.value.step == item_key("1", 3, "t.breaks_once")
    # items that completed keep their checkpoints; those not begun when the run failed
    # wait for the retry: either way, each of the others runs exactly once (an item of the
    # batch still running when the run failed ends first: retry refuses until then)
    wait_until(lambda: not get_store().live_leases(run.id, time.time()), WAIT,
               "the batch's other items to end")
    assert flowkit.retry(run.id).state == "queued"
    assert run.result(WAIT) == [0, 10, 20, 30, 40]
    assert counts(run) == {"split": 1, "item0": 1, "item1": 1, "item2": 1, "item3": 2, "item4": 1}


def test_an_item_of_a_batch_cannot_continue_with_another_step():
    run = wf.handing_over_in_batches.start({"n": 2})
    with pytest.raises(flowkit.StepError, match="batch=1"):
        run.result(WAIT)
