"""A wait's arguments are checked where the component's code calls it: NaN, infinity or a
string reached Redis as a timer's score (or a message as NaN) and failed there, far from
the mistake; a naive datetime meant another moment on a worker in another time zone."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

import flowkit

BAD = [float("nan"), float("inf"), "30", True]


@pytest.mark.parametrize("bad", [*BAD, -1])
def test_a_wait_timeout_or_look_back_is_none_or_finite_seconds(bad):
    with pytest.raises(ValueError, match=r"wait_for_input\(timeout=...\) is a number of "
                                         r"seconds >= 0, or None for no limit"):
        flowkit.wait_for_input("approval", timeout=bad)
    with pytest.raises(ValueError, match=r"wait_for_event\(timeout=...\) is a number"):
        flowkit.wait_for_event("paid", timeout=bad)
    with pytest.raises(ValueError, match=r"wait_for_event\(lookback=...\) is a number"):
        flowkit.wait_for_event("paid", lookback=bad)


@pytest.mark.parametrize("bad", BAD)
def test_a_sleep_is_a_finite_number_of_seconds(bad):
    with pytest.raises(ValueError, match=r"flowkit.sleep\(\) takes a number of seconds"):
        flowkit.sleep(bad)
    with pytest.raises(ValueError, match=r"sleep_until\(\) takes a timezone-aware datetime "
                                         r"or a Unix time"):
        flowkit.sleep_until(bad)


def test_a_deadline_past_the_year_9999_is_refused_where_it_is_asked_for():
    """sleep(1e308) was taken: the run waited with a deadline no datetime can hold, and
    every `flowkit status` of it failed with "timestamp out of range"."""
    with pytest.raises(ValueError, match=r"sleep\(1e\+308\) would end after the year 9999"):
        flowkit.sleep(1e308)
    with pytest.raises(ValueError, match=r"sleep_until\(1800000000000.0\) is after the year 9999: "
                                         r"pass a Unix time in seconds \(not milliseconds\)"):
        flowkit.sleep_until(1.8e12)  # a JavaScript time, in milliseconds
    with pytest.raises(ValueError, match=r"wait_for_input\(timeout=...\) would end after the "
                                         r"year 9999: pass None for no limit"):
        flowkit.wait_for_input("approval", timeout=10**12)
    with pytest.raises(ValueError, match=r"wait_for_event\(timeout=...\) would end after"):
        flowkit.wait_for_event("paid", timeout=1e300)


def test_sleep_until_refuses_a_naive_datetime():
    with pytest.raises(ValueError, match="needs a timezone-aware datetime"):
        flowkit.sleep_until(datetime.now() + timedelta(hours=1))


@pytest.mark.parametrize("bad", [None, 5, "", "a/b", "x" * 201])
def test_an_input_s_name_is_text_the_api_can_reach(bad):
    """None was stored as a wait no sender could name: the run waited until its timeout."""
    with pytest.raises(flowkit.ValidationError, match="An input's name is 1 to 200 characters "
                                                      "without '/'"):
        flowkit.wait_for_input(bad)


def test_good_arguments_still_reach_the_wait():
    """Outside a run, a wait with good arguments says it needs a run; a sleep sleeps."""
    with pytest.raises(flowkit.FlowkitError, match="pauses a step of a run"):
        flowkit.wait_for_input("approval", timeout=0)
    with pytest.raises(flowkit.FlowkitError, match="pauses a step of a run"):
        flowkit.wait_for_event("paid", timeout=1.5, lookback=None)
    flowkit.sleep(-1)  # a deadline already past does not pause
    flowkit.sleep_until(datetime.now().astimezone())


@pytest.mark.parametrize("call, says", [
    (lambda: flowkit.progress(0.5), "the message is text, not 0.5"),
    (lambda: flowkit.progress("half", "0.5"), "progress(fraction=...) is a finite number (held"),
    (lambda: flowkit.progress("half", float("nan")), "progress(fraction=...) is a finite number"),
    (lambda: flowkit.progress("half", 0.5, eta=-3), "progress(eta=...) is a finite number >= 0"),
])
def test_progress_takes_text_then_numbers(call, says):
    """progress(0.5) and a NaN fraction went into the run's events as they were."""
    with pytest.raises((TypeError, ValueError)) as refused:
        call()
    assert says in str(refused.value)


def test_a_fraction_a_little_past_either_end_is_held_to_it_not_refused():
    # 1 - 1.01 from a step's arithmetic: held to 0..1 (step.progress), never a failed step
    flowkit.progress("almost none", -0.01)
    flowkit.progress("all", 1.0000001)
