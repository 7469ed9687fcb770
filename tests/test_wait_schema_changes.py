"""An input's answer that the waiting step's schema refuses when the run resumes: a deploy
changed the schema while the run waited (the answer fit the schema of then), or the
schema's own validators refuse what its published JSON Schema let through.

The run failed with the answer kept: a retry failed the same way at once, and a corrected
answer was refused ("the first answer stands"): a deploy that changed an approval form
failed every run waiting for a person, with no way out. The wait now opens again, saying
why, and takes an answer that fits."""

from __future__ import annotations

import marshmallow
import pytest
from marshmallow import fields

import flowkit
from flowkit import events

pytestmark = pytest.mark.integration
WAIT = 20

#: The form the step asks with: a test changes it while a run waits, as a deploy would.
FORM: dict = {}


def first_form() -> dict:
    return {"ok": fields.Boolean(required=True)}


@flowkit.component(name="schema_change.approve")
def approve(data: dict) -> dict:
    return {"answer": flowkit.wait_for_input("approval", schema=dict(FORM))}


asking = flowkit.Workflow("schema-change", [approve])


@pytest.fixture(autouse=True)
def _form(store, worker):
    FORM.clear()
    FORM.update(first_form())
    yield
    FORM.clear()


def odd(number: int) -> None:
    if number % 2 == 0:
        raise marshmallow.ValidationError("Give an odd number.")


def waiting_events(run: flowkit.Run) -> list[events.Event]:
    return [e for e in run.events() if e.type == events.RUN_WAITING]


def wait_again(run: flowkit.Run, count: int) -> events.Event:
    """The run's ``count``-th run.waiting event, read from its stream as it comes."""
    seen = 0
    for event in flowkit.follow(run.id):
        if event.type == events.RUN_WAITING:
            seen += 1
            if seen == count:
                return event
    raise AssertionError(f"run {run.id} ended: {run.refresh().state}")


def test_an_answer_the_changed_schema_refuses_opens_the_wait_again_saying_why():
    run = asking.start({})
    wait_again(run, 1)
    FORM["reviewer"] = fields.String(required=True)  # deployed while the run waits
    assert flowkit.send_input(run.id, "approval", {"ok": True}).outcome == "resumed"
    again = wait_again(run, 2)
    refused = again.data["refused"]
    assert refused["answer"] == {"ok": True}
    assert refused["errors"] == {"reviewer": ["Missing data for required field."]}
    assert "does not fit the schema this step now has" in refused["message"]
    assert "reviewer" in again.data["schema"]["required"]  # the form as it is now
    record = flowkit.get_run(run.id)
    assert record.state == "waiting"
    assert [w["refused"]["errors"] for w in record.waits] == [refused["errors"]]
    with pytest.raises(flowkit.ValidationError):  # the old answer does not fit the new form
        flowkit.send_input(run.id, "approval", {"ok": True})
    flowkit.send_input(run.id, "approval", {"ok": True, "reviewer": "ann"})
    assert run.result(WAIT) == {"answer": {"ok": True, "reviewer": "ann"}}
    assert len(waiting_events(run)) == 2


def test_an_answer_the_schema_s_own_validator_refuses_is_asked_again():
    """A validator past the JSON Schema (here: an odd number): the API took the answer,
    the step's schema did not."""
    FORM["count"] = fields.Integer(required=True, validate=odd)
    run = asking.start({})
    wait_again(run, 1)
    flowkit.send_input(run.id, "approval", {"ok": False, "count": 2})
    assert wait_again(run, 2).data["refused"]["errors"] == {"count": ["Give an odd number."]}
    flowkit.send_input(run.id, "approval", {"ok": False, "count": 3})
    assert run.result(WAIT) == {"answer": {"ok": False, "count": 3}}
