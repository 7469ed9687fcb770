"""Schedules declared in the code (``Workflow(..., schedules=[...])``): beat, when it starts,
makes what Redis holds the code's (``schedules.store_declared``; a real beat process does it
in tests/chaos/test_flow_control.py). Changed code stands in for a deploy, on the same real
Redis."""

from __future__ import annotations

import json

import pytest

import flowkit
from flowkit.engine import schedules
from flowkit.workflow import _workflows
from tests import workflows as _served  # noqa: F401  (per_tenant)

pytestmark = pytest.mark.integration
NAME = "declared-schedules"


@flowkit.component(name="declared.noop")
def noop(data: dict) -> dict:
    return data


@pytest.fixture
def deploy(store, monkeypatch):
    """``deploy(*declared)``: a beat whose code declares these schedules on NAME starts;
    returns the stored schedules of NAME by id."""
    monkeypatch.setitem(_workflows, NAME, None)  # the fixture's teardown forgets it
    flowkit.Workflow(NAME, [noop])  # served, declaring nothing yet

    def deploy(*declared: flowkit.Schedule) -> dict[str, dict]:
        flowkit.Workflow(NAME, [noop], schedules=declared)
        schedules.store_declared(store)
        return {s["id"]: s for s in schedules.list(store) if s["workflow"] == NAME}

    return deploy


@pytest.mark.parametrize(("every", "other"), [(1234567, 1234568), (100000.4, 100000.2)])
def test_intervals_alike_in_six_digits_get_ids_of_their_own(every, other):
    """``:g`` kept 6 significant digits: the second schedule's default id was the first's,
    and creating it replaced the first without a word."""
    ids = {flowkit.Schedule(every=e).default_id("x") for e in (every, other)}
    assert len(ids) == 2, ids
    assert flowkit.Schedule(every=60).default_id("x") == "x@every60s"  # ids kept as they were
    assert flowkit.Schedule(every=1209600).default_id("x") == "x@every1.2096e+06s"


def test_declared_schedules_are_stored_once_and_keep_their_ticks(deploy, store):
    first = deploy(flowkit.Schedule(every=60, id="often"), flowkit.Schedule(cron="0 9 * * *"))
    assert set(first) == {"often", f"{NAME}@0_9_*_*_*"}
    assert all(s["declared"] and not s["paused"] for s in first.values())
    # its first tick is one interval on, as a schedule made at run time (it fell at once)
    often, next_at = store.schedule("often")
    assert next_at - often["anchor"] == pytest.approx(60, abs=1e-3)
    again = deploy(flowkit.Schedule(every=60, id="often"), flowkit.Schedule(cron="0 9 * * *"))
    assert again == first  # the same code: nothing replaced, the next ticks stand


def test_a_declaration_the_code_dropped_is_deleted_and_a_changed_one_replaced(deploy):
    deploy(flowkit.Schedule(every=60, id="often", input={"n": 1}),
           flowkit.Schedule(cron="0 9 * * *"))
    flowkit.schedules.pause("often")
    made_at_run_time = flowkit.schedules.create(NAME, every=30, id="by-hand")
    assert made_at_run_time["declared"] is False

    # the next deploy: "often" runs every 120 s now, the 9 o'clock cron line became 10
    after = deploy(flowkit.Schedule(every=120, id="often", input={"n": 1}),
                   flowkit.Schedule(cron="0 10 * * *"))
    assert set(after) == {"often", f"{NAME}@0_10_*_*_*", "by-hand"}
    assert after["often"]["every"] == 120 and after["often"]["paused"]  # its pause kept
    assert after["by-hand"] == made_at_run_time  # a schedule made at run time is left alone


def test_a_changed_input_keeps_the_next_tick(deploy, store):
    """Only the input changed: the next tick stays where it was (it moved a whole interval
    on, and an hourly schedule due in a minute was due in an hour)."""
    deploy(flowkit.Schedule(every=3600, id="hourly", input={"n": 1}))
    definition, next_at = store.schedule("hourly")
    store.put_schedule(definition, next_at - 3540)  # due in a minute
    after = deploy(flowkit.Schedule(every=3600, id="hourly", input={"n": 2}))
    assert after["hourly"]["input"] == {"n": 2}
    assert store.schedule("hourly")[1] == next_at - 3540


def test_a_run_time_schedule_under_a_declared_id_and_other_workflows_are_left_alone(
        deploy, store):
    by_hand = flowkit.schedules.create(NAME, every=30, id="shared")
    elsewhere = {"id": "elsewhere@every5s", "workflow": "served-elsewhere", "cron": None,
                 "every": 5, "input": None, "timezone": "UTC", "catchup": False,
                 "anchor": 0.0, "declared": True}
    store.put_schedule(elsewhere, 5.0)  # declared by a workflow this process does not import

    after = deploy(flowkit.Schedule(every=60, id="shared"))
    assert after["shared"] == by_hand
    assert store.schedule("elsewhere@every5s") == (elsewhere, 5.0)


def test_a_declared_id_held_by_a_workflow_not_served_is_taken_over_with_a_warning(
        deploy, store, caplog):
    """A workflow renamed with its schedule's id kept: its ticks must start the new name
    (the old one no longer exists); a run-time schedule of another workflow is the user's
    own and stays, said as an error."""
    renamed = {"id": "nightly", "workflow": "old-name", "cron": None, "every": 60,
               "input": None, "timezone": "UTC", "catchup": False, "anchor": 0.0,
               "declared": True}
    by_hand = {**renamed, "id": "by-hand-elsewhere", "workflow": "other", "declared": False}
    paused = {**renamed, "id": "paused-renamed"}
    store.put_schedule(renamed, 5.0)
    store.put_schedule(by_hand, 5.0)
    store.put_schedule(paused, None)  # an operator paused it

    after = deploy(flowkit.Schedule(every=60, id="nightly"),
                   flowkit.Schedule(every=60, id="by-hand-elsewhere"),
                   flowkit.Schedule(every=60, id="paused-renamed"))
    assert after["nightly"]["workflow"] == NAME and after["nightly"]["declared"]
    assert store.schedule("nightly")[1] == 5.0  # its next tick kept: it fires when it would have
    assert after["paused-renamed"]["workflow"] == NAME and after["paused-renamed"]["paused"]
    assert "schedule 'nightly' was declared by workflow 'old-name'" in caplog.text
    assert store.schedule("by-hand-elsewhere") == (by_hand, 5.0)
    assert "by-hand-elsewhere" not in after
    assert ("which a schedule of workflow 'other' made at run time holds: it is not stored"
            in caplog.text)


def test_a_declaration_an_older_release_stored_with_nan_is_replaced(deploy, store):
    deploy(flowkit.Schedule(every=60, id="old", input={"n": 1}))
    definition, next_at = store.schedule("old")
    store.redis.hset(store.keys.schedules, "old",  # as a release that let NaN through did
                     json.dumps({**definition, "input": {"n": float("nan")}}))
    after = deploy(flowkit.Schedule(every=60, id="old", input={"n": 1}))
    assert after["old"]["input"] == {"n": 1}


@pytest.mark.parametrize("options, says", [
    ({"every": 60, "id": "x/pause"}, "Schedule(id=...) is 1 to 200 printable ASCII"),
    ({"every": 60, "id": "/x"}, "no // and no leading /"),
    ({"every": 60, "id": "a//b"}, "no // and no leading /"),
    ({"every": 60, "id": "daily\n"}, "Schedule(id=...) is 1 to 200 printable ASCII"),
    ({"every": float("inf")}, "Schedule(every=...) is a number of seconds from 1 to"),
    ({"every": True}, "Schedule(every=...) is a number of seconds from 1 to"),
    ({"every": 60, "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"every": 60, "timezone": 5}, "unknown time zone 5"),
    ({"every": 60, "catchup": "yes"}, "Schedule(catchup=...) is True or False, not 'yes'."),
    ({"every": 60, "input": {"at": object()}}, "Schedule(input=...) must be JSON-serialisable"),
])
def test_a_schedule_the_api_could_not_serve_is_refused_where_it_is_written(options, says):
    """From Python, ``x/pause`` and ``/x`` were stored (REST and the CLI refused them), and
    no route reached them: each fired for good."""
    with pytest.raises(flowkit.ConfigError) as refused:
        flowkit.Schedule(**options)
    assert says in str(refused.value)


def test_a_schedule_whose_runs_would_be_refused_is_refused_now(store, monkeypatch):
    """Its input missing the concurrency key's field passed; every tick then failed."""
    with pytest.raises(flowkit.ValidationError) as refused:
        schedules.create("per_tenant", every=60, input={}, store=store)
    assert list(refused.value.fields) == ["tenant"]
    monkeypatch.setitem(_workflows, NAME, None)
    with pytest.raises(flowkit.ConfigError, match=f"Workflow '{NAME}': schedule 'nightly' has "
                                                  "an input its runs would refuse"):
        flowkit.Workflow(NAME, [noop], concurrency=flowkit.Concurrency(limit=1, key="tenant"),
                         schedules=[flowkit.Schedule(every=60, id="nightly", input={})])
    assert schedules.list(store) == []


def test_a_cron_line_celery_cannot_read_is_skipped_alone_and_stops_a_worker(
        deploy, store, caplog):
    """Five fields of the wrong values passed the definition: beat's store_declared then
    failed on it at every start, storing none of the workflow's schedules, logged as if
    Redis were away."""
    stored = deploy(flowkit.Schedule(every=60, id="often"),
                    flowkit.Schedule(cron="99 * * * *", id="never"))
    assert set(stored) == {"often"}
    assert ("Workflow 'declared-schedules': schedule 'never': invalid cron line '99 * * * *'"
            in caplog.text)
    with pytest.raises(flowkit.ConfigError, match="schedule 'never': invalid cron line"):
        schedules.check_declared()  # a worker's start: it refuses, saying this


def test_two_declarations_under_one_id_are_refused(monkeypatch):
    """Same interval, other inputs: both were "x@every60s", and the first was lost."""
    monkeypatch.setitem(_workflows, NAME, None)
    with pytest.raises(flowkit.ConfigError, match=f"Workflow '{NAME}': two schedules are both "
                                                  f"'{NAME}@every60s'; give each its own"):
        flowkit.Workflow(NAME, [noop], schedules=[flowkit.Schedule(every=60, input={"a": 1}),
                                                  flowkit.Schedule(every=60, input={"a": 2})])


def test_two_workflows_declaring_one_schedule_id_are_refused(monkeypatch):
    """Both were stored under "shared": beat kept whichever it stored last."""
    monkeypatch.setitem(_workflows, NAME, None)
    monkeypatch.setitem(_workflows, f"{NAME}-other", None)
    flowkit.Workflow(f"{NAME}-other", [noop], schedules=[flowkit.Schedule(every=60, id="shared")])
    with pytest.raises(flowkit.ConfigError, match=f"Workflows '{NAME}-other' and '{NAME}' both "
                                                  "declare a schedule 'shared'"):
        flowkit.Workflow(NAME, [noop], schedules=[flowkit.Schedule(cron="0 9 * * *", id="shared")])


def test_a_notebook_renaming_a_workflow_that_keeps_its_schedule_id_is_warned(
        monkeypatch, caplog):
    """A cell run again with the workflow renamed raised: the old name stays registered."""
    monkeypatch.setitem(_workflows, NAME, None)
    monkeypatch.setitem(_workflows, f"{NAME}-renamed", None)
    cell = ("flowkit.Workflow({!r}, [noop], "
            "schedules=[flowkit.Schedule(every=60, id='nightly-cell')])")
    for name in (NAME, f"{NAME}-renamed"):
        exec(cell.format(name), {"__name__": "__main__", "flowkit": flowkit, "noop": noop})
    assert _workflows[f"{NAME}-renamed"].module == "__main__"
    assert f"Workflows '{NAME}' and '{NAME}-renamed' both declare a schedule 'nightly-cell'" \
        in caplog.text


def test_a_default_id_the_api_could_not_name_is_refused(monkeypatch):
    """A 200-character workflow name made a 210-character id the API could not name (to
    pause or delete it); with a long cron line, every tick's idempotency key was over 255
    characters, and every tick's run refused."""
    long_name = "w" * 200
    monkeypatch.setitem(_workflows, long_name, None)
    with pytest.raises(flowkit.ConfigError, match=r"the schedule's default id 'w{60}\.\.\.' is "
                                                  "over 200 characters"):
        flowkit.Workflow(long_name, [noop], schedules=[flowkit.Schedule(every=60)])
    flowkit.Workflow(long_name, [noop], schedules=[flowkit.Schedule(every=60, id="daily")])


def test_a_workflow_named_in_any_text_keeps_its_default_schedule_id(monkeypatch, store):
    """The check of a run-time schedule's default id held it to the ASCII rule of an id
    given by hand: a workflow named "résumé" with a declared schedule stopped every worker
    at its start (its ids are reached percent-encoded, as they were)."""
    monkeypatch.setitem(_workflows, "résumé", None)
    flowkit.Workflow("résumé", [noop], schedules=[flowkit.Schedule(every=60)])
    assert schedules.definition_of("résumé", flowkit.Schedule(every=60))["id"] == \
        "résumé@every60s"
    schedules.check_declared()  # raised ConfigError: the worker exited
    made = flowkit.schedules.create("résumé", every=120, input={})
    assert made["id"] == "résumé@every120s"
    flowkit.schedules.delete(made["id"])


def test_a_cron_line_s_spacing_is_one_space_in_its_default_id():
    """A trailing newline (a line read from a file) made an id ending in one, which no URL
    reaches: the schedule fired for good. Tabs and double spaces made ids of their own."""
    schedule = flowkit.Schedule(cron="0  9\t* * 1-5\n")
    assert schedule.cron == "0 9 * * 1-5"
    assert schedule.default_id("report") == "report@0_9_*_*_1-5"


def test_a_schedule_made_at_run_time_under_a_declared_id_is_refused_not_swapped(deploy, store):
    """POST /schedules (or schedules.create) with a declared schedule's id answered 201 and
    replaced it; beat, at its next start, kept the run-time one and said so only in its log."""
    deploy(flowkit.Schedule(every=60, id="nightly"))
    declared = store.schedule("nightly")
    with pytest.raises(flowkit.InvalidState, match="declared in the code of workflow"):
        flowkit.schedules.create(NAME, every=5, id="nightly")
    assert store.schedule("nightly") == declared


def test_a_declared_id_is_refused_at_run_time_before_beat_stored_it(store, monkeypatch):
    """A fresh deploy, beat not yet started: the code declares the id, Redis does not hold
    it yet; the run-time schedule was stored, and beat then refused the code's."""
    monkeypatch.setitem(_workflows, NAME, None)
    flowkit.Workflow(NAME, [noop], schedules=[flowkit.Schedule(every=60, id="fresh")])
    with pytest.raises(flowkit.InvalidState, match=f"declared in the code of workflow '{NAME}'"):
        flowkit.schedules.create(NAME, every=5, id="fresh")
    assert store.schedule("fresh") == (None, None)
