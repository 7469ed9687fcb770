"""The Python API's run functions check what they are given: a NaN timeout reached redis-py's
socket (StoreUnavailable), a NaN delay started the run at once and an infinite one never,
an unknown state listed nothing, a cursor that is not an event id was Redis's own error,
and following a run that does not exist waited for ever."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

import flowkit
from tests import workflows as wf

pytestmark = pytest.mark.integration

LAST_LOCAL = datetime(9999, 12, 31, 23, 59, 59,
                      tzinfo=timezone(-timedelta(hours=23, minutes=59)))


@pytest.mark.parametrize("bad", [float("nan"), "5", True])
def test_a_wait_timeout_is_a_number_or_none(store, bad):
    # scheduled an hour ahead: no worker of the session can take it, whatever runs
    run = wf.simple.start({"n": 1}, delay=3600)
    with pytest.raises(TypeError, match=r"wait\(timeout=...\) is a number of seconds, or None"):
        run.result(bad)
    with pytest.raises(TimeoutError, match="is still scheduled after 0s"):
        run.result(0)
    with pytest.raises(TimeoutError, match=r"is still scheduled after 0(\.0)?s"):
        run.result(-1)  # no wait, as threading's; it said "after -1s"


@pytest.mark.parametrize("options, says", [
    ({"delay": float("nan")}, "start(delay=...) is a number of seconds >= 0, not nan."),
    ({"delay": float("inf")}, "start(delay=...) is a number of seconds >= 0, not inf."),
    ({"delay": "5"}, "start(delay=...) is a number of seconds >= 0, not '5'."),
    ({"start_at": float("nan")}, "start(start_at=...) is a timezone-aware datetime or a Unix "
                                 "time, not nan."),
    # as REST's delay; 10**12 seconds on made a run every `flowkit status` failed to show
    ({"delay": 10**12}, "start(delay=...) is at most 31622400 seconds (366 days), not "
                        "1000000000000: pass start_at= for a later start."),
    ({"start_at": 1.8e12}, "start(start_at=1800000000000.0) is after the year 9999 (UTC): "
                           "pass a Unix time in seconds (not milliseconds), or an earlier "
                           "datetime."),
    # the year 10000 once in UTC: it took the aware datetime as it came
    ({"start_at": LAST_LOCAL}, f"start(start_at={LAST_LOCAL!r}) is after the year 9999 (UTC): "
                               "pass a Unix time in seconds (not milliseconds), or an earlier "
                               "datetime."),
])
def test_a_delayed_start_is_a_finite_time(store, options, says):
    with pytest.raises(flowkit.ConfigError) as refused:
        wf.simple.start({"n": 1}, **options)
    assert str(refused.value) == says
    assert flowkit.list_runs() == []


def test_listing_takes_known_states_and_a_positive_limit(store):
    with pytest.raises(flowkit.ValidationError) as refused:
        flowkit.list_runs(state="done")
    assert refused.value.fields == {"state": [
        "'done' is not a run state: one of scheduled, queued, running, waiting, succeeded, "
        "failed, cancelled."]}
    for bad in (0, -1, 2.5):
        with pytest.raises(flowkit.ValidationError, match="limit is a whole number >= 1"):
            flowkit.list_runs(limit=bad)


def test_a_cursor_that_is_not_an_event_id_is_a_validation_error(store):
    run = wf.simple.start({"n": 1}, delay=3600)
    for read in (flowkit.history, flowkit.follow):
        with pytest.raises(flowkit.ValidationError) as refused:
            read(run.id, after="abc")
        assert list(refused.value.fields) == ["after"]
    assert [e.type for e in flowkit.history(run.id, after="0")] == ["run.scheduled"]


def test_following_a_run_that_does_not_exist_says_so_at_once(store):
    followed: list = []

    def follow() -> None:
        try:
            followed.extend(flowkit.follow("01UNKNOWNRUN"))
        except flowkit.RunNotFound as exc:
            followed.append(exc)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    thread.join(10)  # it waited for ever on a stream no run would write
    assert not thread.is_alive()
    assert isinstance(followed[0], flowkit.RunNotFound)


def test_a_run_id_is_a_string_and_a_run_object_is_told_to_pass_its_id(store):
    """A Run, None or a number reached redis-py: AttributeError: 'Run' has no 'encode'."""
    run = wf.simple.start({"n": 1}, delay=3600)
    calls = [flowkit.get_run, flowkit.wait, flowkit.history, flowkit.follow,
             flowkit.cancel, flowkit.retry, lambda r: flowkit.send_input(r, "ok", 1)]
    for call in calls:
        with pytest.raises(TypeError, match=r"A run id is a string like '01J...' \(pass run.id\), "
                                            r"not Run\."):
            call(run)
        for bad in (None, 5):
            with pytest.raises(TypeError, match=f"not {type(bad).__name__}"):
                call(bad)
    assert flowkit.get_run(run.id).state == "scheduled"


def test_a_cancel_s_reason_is_text(store):
    """A number or a dict was taken, and its run.cancelled event said 5 where readers (the
    dashboard, the CLI) show text."""
    run = wf.simple.start({"n": 1}, delay=3600)
    for bad in (5, {"why": "x"}, b"bytes"):
        with pytest.raises(TypeError, match=r"A cancel's reason is text, not "):
            flowkit.cancel(run.id, reason=bad)
    assert flowkit.get_run(run.id).state == "scheduled"  # nothing was cancelled
    flowkit.cancel(run.id, reason="not needed")
    [cancelled] = [e for e in run.events() if e.type == "run.cancelled"]
    assert cancelled.data["reason"] == "not needed"


def test_history_of_an_unknown_run_says_so(store):
    """It answered [], as for a run with nothing yet: a typo looked like an empty run."""
    with pytest.raises(flowkit.RunNotFound):
        flowkit.history("01UNKNOWNRUN")
    with pytest.raises(flowkit.RunNotFound):  # from a cursor too
        flowkit.history("01UNKNOWNRUN", after="1700000000000-0")


def test_a_follow_s_block_is_whole_milliseconds(store):
    run = wf.simple.start({"n": 1}, delay=3600)
    for bad in (-1, 0, 0.5, "100"):  # 0: Redis's BLOCK 0 waits for ever
        with pytest.raises(ValueError, match=r"follow\(block_ms=...\) is a whole number"):
            flowkit.follow(run.id, block_ms=bad)


def test_an_input_sent_under_a_name_no_wait_could_have_is_refused(store):
    run = wf.simple.start({"n": 1}, delay=3600)
    for bad in (None, "", "a/b"):
        with pytest.raises(flowkit.ValidationError) as refused:
            flowkit.send_input(run.id, bad, 1)
        assert list(refused.value.fields) == ["name"]


def test_a_huge_whole_timeout_waits_like_a_long_one(store):
    run = wf.simple.start({"n": 1}, delay=3600)
    with pytest.raises(TimeoutError, match="is still scheduled"):
        run.result(-10**400)  # 10**400 overflowed math.isnan: OverflowError
    assert flowkit.wait(run.id, 0).state == "scheduled"


@pytest.mark.parametrize("options, says", [
    ({"idempotency_key": ["a"]}, "start(idempotency_key=...) is up to 255 characters of text, "
                                 "not ['a']."),
    ({"idempotency_key": "k" * 100_000}, "not str of 100000 characters."),
    ({"owner": ["ann"]}, "start(owner=...) is text (who started the run) of up to 1000 "
                         "characters, not ['ann']."),
    ({"owner": "a" * 1001}, "of up to 1000 characters, not str of 1001 characters."),
])
def test_an_idempotency_key_or_owner_is_text(store, options, says):
    """A list reached Redis (DataError); a 100 KB key was stored in every index."""
    with pytest.raises(flowkit.ConfigError) as refused:
        wf.simple.start({"n": 1}, **options)
    assert says in str(refused.value)
    assert flowkit.list_runs() == []


def test_an_empty_idempotency_key_is_none_as_a_keyless_run_reads_it(store):
    keyless = wf.simple.start({"n": 1}, delay=3600)
    assert keyless.idempotency_key == ""
    again = wf.simple.start({"n": 1}, delay=3600, idempotency_key=keyless.idempotency_key)
    assert again.created and again.id != keyless.id


def test_a_huge_whole_timeout_waits_for_the_result(store, worker):
    run = wf.simple.start({"n": 1})
    assert run.result(10**400) == {"n": 4}


def test_a_failure_notice_for_a_run_already_gone_is_dropped_quietly(store):
    """A run deleted between its failure and its notice (a test's flush, a short retention)
    raised RunNotFound in the worker's task, logged as an unexpected error."""
    from flowkit.engine import notify

    notify.run_failed("01GONERUN")  # raised RunNotFound
    assert not store.redis.exists(store.keys.notified("01GONERUN"))  # nothing left behind


def test_a_start_with_redis_down_names_the_url_and_the_setting(flowkit_env):
    """It said only "the Celery broker is unreachable", to a user who set no broker: the
    broker is flowkit's Redis unless FLOWKIT_BROKER_URL sets it apart."""
    from flowkit.testing import free_port
    from tests.conftest import ROOT

    script = ("import flowkit\nfrom tests import workflows as wf\ntry:\n"
              "    wf.simple.start({'n': 1})\nexcept flowkit.BrokerUnavailable as exc:\n"
              "    print(exc.run_id, exc)\n")
    down = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, **flowkit_env, "FLOWKIT_REDIS_URL": down,
           "FLOWKIT_REDIS_RETRY_SECONDS": "0.5"}
    del env["FLOWKIT_BROKER_URL"]  # the broker is the store's Redis, as by default
    said = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)
    assert said.stdout.startswith(f"None the Celery broker at {down} is unreachable ("), said
    assert said.stdout.rstrip().endswith("); start it, or point FLOWKIT_REDIS_URL at yours")


def test_a_validation_error_says_its_fields_when_printed():
    """Uncaught, it said only "Invalid workflow input."; the API still answers the message
    alone, with the fields beside it."""
    from tests import workflows

    with pytest.raises(flowkit.ValidationError) as refused:
        workflows.simple.validate({})
    assert refused.value.message == "Invalid workflow input."
    assert str(refused.value) == "Invalid workflow input. (n: Missing data for required field.)"
    said_already = flowkit.ValidationError({"key": ["too long"]}, "Invalid event key: too long")
    assert str(said_already) == "Invalid event key: too long"  # not said twice
