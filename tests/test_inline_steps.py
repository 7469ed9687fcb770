"""A worker that finishes a step runs the next steps of its chain itself, within its time
budget, on its own queue only; each is still a step (lease, checkpoint, events)."""

from __future__ import annotations

import pytest
from celery import signals

import flowkit
from flowkit import config
from tests import workflows as wf
from tests.conftest import counts

pytestmark = pytest.mark.integration
WAIT = 30


@pytest.fixture(autouse=True)
def _deployment(store, worker):
    """A clean store and the session's worker."""


@pytest.fixture
def published():
    """The step and finish messages published from this process (the in-thread worker's
    included), as (task name, run id)."""
    sent: list[tuple[str, str]] = []

    def record(sender=None, body=None, **_):
        kwargs = body[1] if isinstance(body, (list, tuple)) else {}
        sent.append((sender, (kwargs or {}).get("run_id")))

    signals.before_task_publish.connect(record, weak=False)
    yield sent
    signals.before_task_publish.disconnect(record)


def step_messages(sent: list[tuple[str, str]], run_id: str) -> list[str]:
    return [name for name, run in sent if run == run_id]


def test_a_chain_of_quick_steps_runs_back_to_back_in_one_message(published, monkeypatch):
    # a budget the 20 steps cannot spend even on a loaded machine (the default, 50 ms, is
    # what a pause of the test process can take)
    monkeypatch.setattr(config, "_settings", config.get_settings().replace(inline_steps_seconds=30))
    run = wf.twenty.start({"n": 0})
    assert run.result(WAIT) == {"n": 20}
    assert counts(run) == {"add_one": 20}
    assert step_messages(published, run.id) == ["flowkit.step.t.add_one"]  # the first only
    started = [e for e in run.events() if e.type == "step.started"]
    assert [e.data["step"] for e in started] == [f"{i}:t.add_one" for i in range(20)]
    assert len({e.data["worker"] for e in started}) == 1


def test_with_no_budget_every_step_is_a_message(published, monkeypatch):
    monkeypatch.setattr(config, "_settings", config.get_settings().replace(inline_steps_seconds=0))
    run = wf.twenty.start({"n": 0})
    assert run.result(WAIT) == {"n": 20}
    # the last step's completion still ends the run: a run's end is not a step
    assert step_messages(published, run.id) == ["flowkit.step.t.add_one"] * 20


def test_a_step_begun_after_the_budget_is_sent_as_a_message(published, monkeypatch):
    # under the slow step's 0.2 s, and room for one quick step after it
    monkeypatch.setattr(config, "_settings", config.get_settings().replace(inline_steps_seconds=0.15))
    run = wf.slow_first.start({"n": 0})
    assert run.result(WAIT) == {"n": 3}
    # the slow step spent the budget: the next goes to the queue, and runs the last itself
    assert step_messages(published, run.id) == ["flowkit.step.t.slow_add",
                                                 "flowkit.step.t.add_one"]


def test_a_step_bound_for_another_queue_is_never_run_here(published, start_worker):
    side = start_worker("side", queues=(wf.SIDE,), concurrency=1)
    run = wf.crossing.start({"n": 1})
    assert run.result(WAIT) == {"n": 5}
    started = {e.data["step"]: e.data["worker"] for e in run.events() if e.type == "step.started"}
    assert started["1:t.double"].startswith(f"{side.name}@")
    assert not started["0:t.add_one"].startswith(f"{side.name}@")
    assert step_messages(published, run.id)[:2] == ["flowkit.step.t.add_one", "flowkit.step.t.double"]


def test_the_last_step_s_completion_ends_the_run_without_a_finish_message(published):
    run = wf.capped.start({"n": 1})
    assert run.result(WAIT) == {"n": 2}
    assert step_messages(published, run.id) == ["flowkit.step.t.add_one"]
    assert [e.type for e in run.events()][-2:] == ["step.completed", "run.succeeded"]
    assert counts(run) == {"add_one": 1}


def test_an_output_its_workflow_refuses_still_fails_the_run_saying_why(published, store):
    run = wf.capped.start({"n": 5})
    with pytest.raises(flowkit.StepError) as failed:
        run.result(WAIT)
    # the field's message: the run's error said only "failed its schema", not which field
    assert str(failed.value) == ('output rejected: Workflow output failed its schema: '
                                 '{"n": ["Must be less than or equal to 2."]}.')
    assert store.checkpoints(run.id) == {"0:t.add_one": '{"n":6}'}  # the step completed
    assert step_messages(published, run.id) == ["flowkit.step.t.add_one"]  # run here
