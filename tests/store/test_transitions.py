"""Every Lua transition of the store, table by table, on a real Redis with no worker.

Time is ours: every call gets an explicit ``now`` (the rate buckets excepted: they read
Redis's clock, so their budgets are small enough that no test's duration matters).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import product
from typing import Any

import pytest
import redis
from ulid import ULID

from flowkit import events
from flowkit.engine.control import list_runs
from flowkit.serialization import loads
from flowkit.states import (
    RestartCause,
    RestartRefusal,
    RunState,
    StepStart,
    WaitKind,
    WaitOutcome,
)
from flowkit.store import HANDED_OVER, BrokerMessages, Ended, Store
from flowkit.store.keys import shard_of

pytestmark = pytest.mark.integration

T = 1000.0  # the tests' clock starts here
RUN = "run-1"
STEP = "0:a"
TOKEN = "tok-1"
WORKER = "w1"
OTHER = "1:b"  # a second step (another branch), begun with token "tok-2"
INPUT = "approve"  # the name of the input STEP waits for
YES = '{"input":"yes"}'  # an answer to it
ERROR = {"type": "RuntimeError", "message": "boom", "step": STEP, "attempts": []}


# -- helpers ----------------------------------------------------------------------------


def lapse(store) -> float:
    return store.settings.heartbeat_lapse


def record(run_id: str = RUN, restarts: int = 0,
           state: RunState = RunState.QUEUED) -> dict[str, Any]:
    """A new run's record; ``restarts`` > 0: that many restarts in a row without progress
    (no checkpoint since: restart.lua's ``stuck_restarts`` and ``checkpoints_at_restart``)."""
    doc = {"id": run_id, "workflow": "wf", "version": "1", "state": state.value,
           "input": "{}", "created_at": T, "updated_at": T, "gen": 0, "restarts": restarts}
    if restarts:
        doc.update(stuck_restarts=restarts, checkpoints_at_restart=0)
    return doc


def queued_event(run_id: str = RUN) -> dict[str, Any]:
    return events.make(events.RUN_QUEUED, run_id, workflow="wf", version="1")


def begin(store, run_id: str = RUN, *, token: str = TOKEN, now: float = T, gen: int = 0,
          step: str = STEP, worker: str = WORKER):
    return store.begin_step(run_id, step, gen, token, worker, now, "comp")


def complete(store, run_id: str = RUN, *, token: str = TOKEN, output: str = '"out"',
             now: float = T + 1, step: str = STEP) -> tuple[str, int, bool]:
    done = events.make(events.STEP_COMPLETED, run_id, step=step, attempt=1)
    return store.complete_step(run_id, step, token, output, now, done, worker=WORKER)


def fail(store, run_id: str = RUN, *, call_id: str | None = None, now: float = T + 1,
         gen: int = 0) -> bool:
    step_failed = events.make(events.STEP_FAILED, run_id, step=STEP, attempt=1, error=ERROR)
    run_failed = events.make(events.RUN_FAILED, run_id, step=STEP, error=ERROR)
    return store.fail(run_id, gen, STEP, TOKEN, now, ERROR, step_failed, run_failed,
                      call_id=call_id)


def finish(store, run_id: str = RUN, *, call_id: str | None = None, now: float = T + 1,
           gen: int = 0) -> bool:
    return finish_ended(store, run_id, call_id=call_id, now=now, gen=gen) is not None


def finish_ended(store, run_id: str = RUN, *, call_id: str | None = None, now: float = T + 1,
                 gen: int = 0) -> Ended | None:
    done = events.make(events.RUN_SUCCEEDED, run_id, output="out")
    return store.finish(run_id, gen, now, '"out"', done, call_id=call_id)


def cancel(store, run_id: str = RUN, *, call_id: str | None = None, now: float = T + 1,
           gen: int = 0) -> int:
    return store.cancel(run_id, now, events.make(events.RUN_CANCELLED, run_id), call_id=call_id)


def make_run(store, state: RunState = RunState.QUEUED, *, run_id: str = RUN,
             restarts: int = 0) -> str:
    """A run created at T; past queued, step STEP began at T (TOKEN, WORKER, attempt 1).
    ``restarts``: restarts without progress so far (see ``record``)."""
    assert store.create_run(record(run_id, restarts), queued_event(run_id), None) == (run_id, True)
    if state == RunState.CANCELLED:
        assert cancel(store, run_id) == 1
    elif state != RunState.QUEUED:
        assert begin(store, run_id).status == StepStart.RUN
        if state == RunState.SUCCEEDED:
            complete(store, run_id)
            assert finish(store, run_id)
        elif state == RunState.FAILED:
            assert fail(store, run_id)
    assert store.get_run(run_id)["state"] == state
    return run_id


def history(store, run_id: str = RUN) -> list[events.Event]:
    return events.parse(store.history(run_id, events.START))


def types(store, run_id: str = RUN) -> list[str]:
    return [e.type for e in history(store, run_id)]


def of_type(store, type_: str, run_id: str = RUN) -> list[dict[str, Any]]:
    return [e.data for e in history(store, run_id) if e.type == type_]


def score(store, index: Callable[[int], str], run_id: str = RUN) -> float | None:
    return store.redis.zscore(index(shard_of(run_id)), run_id)


def lease_lapses(store, run_id: str = RUN, step: str = STEP) -> float | None:
    return store.redis.zscore(store.keys.leases(shard_of(run_id)), f"{run_id} {step}")


def lease(store, run_id: str = RUN, step: str = STEP) -> dict[str, Any] | None:
    raw = store.redis.hget(store.keys.inflight(run_id), step)
    return None if raw is None else loads(raw)


def leases_of(store, run_id: str = RUN) -> list[str]:
    members = store.redis.zrange(store.keys.leases(shard_of(run_id)), 0, -1)
    return [m for m in members if m.startswith(f"{run_id} ")]


@contextmanager
def done_channel(store, run_id: str = RUN) -> Iterator[Callable[[], str | None]]:
    """Subscribed (and confirmed) to the run's done channel; yields ``next_message()``."""
    pubsub = store.redis.pubsub()
    pubsub.subscribe(store.keys.done(run_id))
    try:
        confirmed = pubsub.get_message(timeout=5)
        assert confirmed is not None and confirmed["type"] == "subscribe"

        def next_message() -> str | None:
            message = pubsub.get_message(timeout=5)
            return None if message is None else message["data"]

        yield next_message
    finally:
        pubsub.close()


def mark_end_of_channel(store, run_id: str = RUN) -> None:
    """Publish a marker: a subscriber reading it next got nothing from the calls before."""
    store.redis.publish(store.keys.done(run_id), "marker")


def begin_other(store, run_id: str = RUN, *, now: float = T + 1, gen: int = 0) -> None:
    """Step OTHER (another branch) takes its lease with token tok-2."""
    begun = begin(store, run_id, step=OTHER, token="tok-2", now=now, gen=gen)
    assert begun.status == StepStart.RUN


def fields_of(store, *names: str, run_id: str = RUN) -> tuple[str | None, ...]:
    run = store.get_run(run_id)
    return tuple(run.get(name) for name in names)


# -- wait helpers --------------------------------------------------------------------------


def wait_key(kind: WaitKind = WaitKind.INPUT, name: str = INPUT, step: str = STEP) -> str:
    """Where a step's first wait is checkpointed, as flowkit.engine.step names it."""
    return f"{step}/0:wait:{kind}:{name}"


def wait_spec(kind: WaitKind = WaitKind.INPUT, name: str = INPUT, step: str = STEP,
              due: float | None = None, attempt: int = 1) -> dict[str, Any]:
    return {"kind": kind.value, "name": name, "step": step, "attempt": attempt,
            "expires_at": due}


def pause(store, run_id: str = RUN, *, kind: WaitKind = WaitKind.INPUT, name: str = INPUT,
          step: str = STEP, token: str = TOKEN, gen: int = 0, due: float | None = None,
          now: float = T + 1, attempt: int = 1) -> tuple[WaitOutcome, str | None]:
    """Step ``step`` (holding ``token``'s lease) waits for ``kind`` ``name`` (begin_wait)."""
    waiting = events.make(events.RUN_WAITING, run_id, step=step, kind=kind.value, name=name,
                          expires_at=due)
    return store.begin_wait(run_id, gen, step, token, wait_key(kind, name, step),
                            wait_spec(kind, name, step, due, attempt), due, now, waiting)


def deliver(store, run_id: str = RUN, *, by: str = WaitKind.INPUT, match: str = INPUT,
            answer: str = YES, now: float = T + 5) -> tuple[WaitOutcome, int]:
    resumed = events.make(events.RUN_RESUMED, run_id, by=str(by), name=match)
    return store.deliver(run_id, by, match, answer, now, resumed)


def waiting_run(store, run_id: str = RUN, *, kind: WaitKind = WaitKind.INPUT,
                name: str = INPUT, due: float | None = None) -> str:
    """A run whose step STEP (nothing else in flight) paused at T + 1; returns the wait key."""
    make_run(store, RunState.RUNNING, run_id=run_id)
    assert pause(store, run_id, kind=kind, name=name, due=due) == (WaitOutcome.PAUSED, None, 0)
    assert store.get_run(run_id)["state"] == RunState.WAITING
    return wait_key(kind, name)


def scheduled_run(store, run_id: str = RUN, *, start_at: float = T + 60) -> str:
    """A run created at T to start at ``start_at`` (create_run's ``start_at``)."""
    scheduled = events.make(events.RUN_SCHEDULED, run_id, workflow="wf", version="1",
                            start_at=start_at)
    assert store.create_run(record(run_id, state=RunState.SCHEDULED), scheduled, None,
                            start_at=start_at) == (run_id, True)
    return run_id


def open_waits(store, run_id: str = RUN) -> dict[str, dict[str, Any]]:
    return {key: loads(spec) for key, spec in store.redis.hgetall(store.keys.waits(run_id)).items()}


def timer(store, key: str, run_id: str = RUN) -> float | None:
    return store.redis.zscore(store.keys.timers(shard_of(run_id)), f"{run_id} {key}")


def timers_of(store, run_id: str = RUN) -> list[str]:
    members = store.redis.zrange(store.keys.timers(shard_of(run_id)), 0, -1)
    return [m for m in members if m.startswith(f"{run_id} ")]


# -- create -------------------------------------------------------------------------------


def test_create_stores_a_new_queued_run(store):
    assert store.create_run(record(), queued_event(), None) == (RUN, True)
    assert store.get_run(RUN)["state"] == RunState.QUEUED
    assert types(store) == [events.RUN_QUEUED]
    assert score(store, store.keys.queued) == T
    assert score(store, store.keys.running) is None
    assert store.redis.zscore(store.keys.runs, RUN) == T
    assert store.redis.zscore(store.keys.runs_of("wf"), RUN) == T


def test_create_after_redis_forgot_its_scripts_loads_it_and_lists_the_run(store):
    store.redis.script_flush()  # as a Redis restarted without its script cache
    assert store.create_run(record(), queued_event(), None) == (RUN, True)
    assert store.get_run(RUN)["state"] == RunState.QUEUED
    assert types(store) == [events.RUN_QUEUED]
    assert store.redis.zscore(store.keys.runs, RUN) == T


def test_create_again_returns_false_and_appends_nothing(store):
    make_run(store)
    assert store.create_run(record(), queued_event(), None) == (RUN, False)
    assert types(store) == [events.RUN_QUEUED]


def test_create_with_a_used_idempotency_key_returns_the_first_run(store):
    assert store.create_run(record("run-1"), queued_event("run-1"), "key") == ("run-1", True)
    assert store.create_run(record("run-2"), queued_event("run-2"), "key") == ("run-1", False)
    assert store.get_run("run-2") == {}
    assert types(store, "run-1") == [events.RUN_QUEUED]
    assert types(store, "run-2") == []


def test_create_under_a_claimed_key_without_a_run_creates_the_claimed_id(store):
    store.redis.set(store.keys.idempotency("wf", "key"), "claimed")
    assert store.create_run(record("run-2"), queued_event("run-2"), "key") == ("claimed", True)
    assert store.get_run("claimed")["id"] == "claimed"
    assert store.get_run("run-2") == {}
    assert types(store, "claimed") == [events.RUN_QUEUED]
    assert score(store, store.keys.queued, "claimed") == T


def test_create_under_a_key_claimed_a_moment_ago_waits_for_its_maker_s_run(store):
    """The claim and the run are two writes: a start that came between them made the run
    itself under the maker's id, with its own input, and the maker was told its key was
    used (or used with another input)."""
    claim = store.keys.idempotency("wf", "key")
    store.redis.set(claim, "claimed", ex=store.settings.retention_seconds)  # the maker's
    maker = threading.Timer(0.3, lambda: store.create_run(
        {**record("claimed"), "input": '{"by":"maker"}'}, queued_event("claimed"), None))
    maker.start()
    try:
        assert store.create_run(record("run-2"), queued_event("run-2"), "key") == \
            ("claimed", False)
    finally:
        maker.join()
    assert store.get_run("claimed")["input"] == '{"by":"maker"}'
    assert store.get_run("run-2") == {}


def test_create_sent_again_after_its_claim_s_reply_was_lost_does_not_wait_for_itself(store):
    """The claim names this very start's run (its SET went through, the reply was lost, the
    call was sent again): nothing to wait for."""
    store.redis.set(store.keys.idempotency("wf", "key"), "run-2",
                    ex=store.settings.retention_seconds)
    began = time.monotonic()
    assert store.create_run(record("run-2"), queued_event("run-2"), "key") == ("run-2", True)
    assert time.monotonic() - began < 1.0


def test_create_under_a_key_claimed_a_moment_ago_by_a_maker_that_stopped_makes_its_run(store):
    store.redis.set(store.keys.idempotency("wf", "key"), "claimed",
                    ex=store.settings.retention_seconds)
    assert store.create_run(record("run-2"), queued_event("run-2"), "key") == ("claimed", True)
    assert store.get_run("claimed")["id"] == "claimed"


def test_create_under_a_claimed_key_names_the_claimed_run_in_its_queued_event(store):
    store.redis.set(store.keys.idempotency("wf", "key"), "claimed")
    store.create_run(record("run-2"), queued_event("run-2"), "key")
    assert [e["run"] for e in of_type(store, events.RUN_QUEUED, "claimed")] == ["claimed"]


def other_db(store):
    """A client of database 5 of the store's server: a broker's database no worker reads."""
    kwargs = store.redis.connection_pool.connection_kwargs
    client = redis.Redis(host=kwargs["host"], port=kwargs["port"], db=5, decode_responses=True)
    client.flushdb()
    return client


def test_create_pushes_the_run_s_broker_messages_into_the_broker_s_database(store):
    broker = other_db(store)
    sent = BrokerMessages(RUN, 5, [("q", "first"), ("q\x06\x169", "second")])
    assert store.create_run(record(), queued_event(), None, messages=sent) == (RUN, True)
    assert sent.pushed
    assert broker.lrange("q", 0, -1) == ["first"]
    assert broker.lrange("q\x06\x169", 0, -1) == ["second"]
    assert store.redis.exists("q") == 0  # the store's own database is left as it was
    assert store.get_run(RUN)["state"] == RunState.QUEUED  # the script's SELECT was its own


def test_create_of_an_existing_run_pushes_no_message(store):
    broker = other_db(store)
    make_run(store)
    sent = BrokerMessages(RUN, 5, [("q", "again")])
    assert store.create_run(record(), queued_event(), None, messages=sent) == (RUN, False)
    assert not sent.pushed
    assert broker.llen("q") == 0


def test_create_under_a_claimed_key_pushes_no_message_naming_another_run(store):
    broker = other_db(store)
    store.redis.set(store.keys.idempotency("wf", "key"), "claimed")
    sent = BrokerMessages("run-2", 5, [("q", "names run-2")])
    assert store.create_run(record("run-2"), queued_event("run-2"), "key",
                            messages=sent) == ("claimed", True)
    assert not sent.pushed  # the caller publishes for the claimed run itself
    assert broker.llen("q") == 0


def test_create_with_start_at_stores_a_scheduled_run_in_the_timers_index(store):
    scheduled_run(store, start_at=T + 60)
    assert store.get_run(RUN)["state"] == RunState.SCHEDULED  # as the record gave it
    assert timer(store, "$start") == T + 60
    assert score(store, store.keys.queued) is None and score(store, store.keys.running) is None
    assert store.redis.zscore(store.keys.runs, RUN) == T
    assert types(store) == [events.RUN_SCHEDULED]
    assert store.due_timers(T + 59) == [] and store.due_timers(T + 60) == [(RUN, "$start")]


# -- begin_step -------------------------------------------------------------------------


def _gone(store):
    return "unknown", {}


def _ended(state: RunState):
    def setup(store):
        return make_run(store, state), {"token": "tok-2", "now": T + 2}
    return setup


def _stale(store):
    make_run(store, RunState.RUNNING)
    assert store.restart(RUN, expected_state=RunState.RUNNING, reason="r", now=T + 1)[0] == 1
    return RUN, {"token": "tok-2", "now": T + 2, "gen": 0}


def _checkpointed(store):
    make_run(store, RunState.RUNNING)
    complete(store)
    return RUN, {"token": "tok-2", "now": T + 2}


def _leased(store):
    make_run(store, RunState.RUNNING)
    return RUN, {"token": "tok-2", "now": T + lapse(store) / 2}


def _scheduled(store):
    """Not due yet: its start's timer has not fired."""
    return scheduled_run(store), {"now": T + 1}


@pytest.mark.parametrize(("setup", "status"), [
    pytest.param(_gone, StepStart.GONE, id="gone"),
    pytest.param(_ended(RunState.SUCCEEDED), StepStart.TERMINAL, id="terminal-succeeded"),
    pytest.param(_ended(RunState.FAILED), StepStart.TERMINAL, id="terminal-failed"),
    pytest.param(_ended(RunState.CANCELLED), StepStart.TERMINAL, id="terminal-cancelled"),
    pytest.param(_stale, StepStart.STALE, id="stale"),
    pytest.param(_checkpointed, StepStart.CHECKPOINT, id="checkpoint"),
    pytest.param(_leased, StepStart.LEASED, id="leased"),
    pytest.param(_scheduled, StepStart.STALE, id="scheduled-not-due"),
])
def test_begin_step_refuses_to_run(store, setup, status):
    run_id, kwargs = setup(store)
    attempts_before = store.redis.hget(store.keys.attempts(run_id), STEP)
    events_before = types(store, run_id)
    begun = begin(store, run_id, **kwargs)
    assert begun.status == status
    assert begun.checkpoint == ('"out"' if status == StepStart.CHECKPOINT else None)
    assert store.redis.hget(store.keys.attempts(run_id), STEP) == attempts_before
    assert types(store, run_id) == events_before
    assert lease(store, run_id) is None or lease(store, run_id)["token"] != "tok-2"


def test_begin_step_on_a_queued_run_starts_it_once(store):
    make_run(store)
    first = begin(store)
    assert (first.status, first.attempt) == (StepStart.RUN, 1)
    run = store.get_run(RUN)
    assert run["state"] == RunState.RUNNING
    assert float(run["started_at"]) == T and run["worker"] == WORKER
    assert score(store, store.keys.queued) is None
    assert score(store, store.keys.running) == T
    assert lease_lapses(store) == T + lapse(store)
    assert lease(store) == {"token": TOKEN, "worker": WORKER, "attempt": 1,
                            "expires": T + lapse(store)}
    other = begin(store, step="1:b", token="tok-2", now=T + 1)
    assert (other.status, other.attempt) == (StepStart.RUN, 1)
    assert float(store.get_run(RUN)["started_at"]) == T
    assert types(store) == [events.RUN_QUEUED, events.RUN_STARTED, events.STEP_STARTED,
                            events.STEP_STARTED]


def test_begin_step_resent_with_the_same_token_is_the_same_attempt(store):
    make_run(store)
    first = begin(store)
    again = begin(store, now=T + 1)
    assert (again.status, again.attempt) == (first.status, first.attempt) == (StepStart.RUN, 1)
    assert [e["attempt"] for e in of_type(store, events.STEP_STARTED)] == [1]
    assert len(of_type(store, events.RUN_STARTED)) == 1


def test_begin_step_after_another_tokens_lease_lapsed_is_the_next_attempt(store):
    make_run(store, RunState.RUNNING)
    later = T + lapse(store) + 1
    begun = begin(store, token="tok-2", worker="w2", now=later)
    assert (begun.status, begun.attempt) == (StepStart.RUN, 2)
    assert lease(store)["token"] == "tok-2"
    assert lease_lapses(store) == later + lapse(store)
    assert [e["attempt"] for e in of_type(store, events.STEP_STARTED)] == [1, 2]


def test_begin_step_on_a_waiting_run_makes_it_running_again(store):
    waiting_run(store)  # STEP paused at T + 1; OTHER's message comes after
    begun = begin(store, step=OTHER, token="tok-2", now=T + 2)
    assert (begun.status, begun.attempt) == (StepStart.RUN, 1)
    run = store.get_run(RUN)
    assert (run["state"], run["gen"]) == (RunState.RUNNING, "0")
    assert score(store, store.keys.running) == T + 2
    assert len(of_type(store, events.RUN_STARTED)) == 1  # it had started already
    assert list(open_waits(store)) == [wait_key()]  # STEP still waits


# -- expiry ---------------------------------------------------------------------------------


def run_keys(store, run_id: str = RUN) -> list[str]:
    """Every key of the run that exists (record, streams, hashes, trace)."""
    keys = store.keys.script_keys(run_id)
    return [name for name in [*keys[:8], keys[13]] if store.redis.exists(name)]


def test_a_live_run_never_expires_and_an_ended_one_after_the_retention(store):
    """A run may wait weeks for a person: while it is live its keys have no expiry, and
    from its end they expire the retention after their last write."""
    make_run(store, RunState.RUNNING)
    store.save_checkpoint(RUN, f"{STEP}/0:inline", '"sub"')
    store.emit(RUN, 0, events.make(events.STEP_OUTPUT, RUN, step=STEP, chunk="c"))
    store.append_trace([(RUN, '{"id":"step:0@1"}')])
    assert pause(store)[0] == WaitOutcome.PAUSED
    assert store.get_run(RUN)["state"] == RunState.WAITING
    keys = run_keys(store)
    assert {store.keys.trace(RUN), store.keys.checkpoints(RUN)} <= set(keys)
    assert {key: store.redis.ttl(key) for key in keys} == {key: -1 for key in keys}

    outcome, gen = deliver(store)
    assert outcome == WaitOutcome.RESUMED
    assert fail(store, call_id="end", now=T + 9, gen=gen)
    retention = store.settings.retention_seconds
    assert all(0 < store.redis.ttl(key) <= retention for key in run_keys(store))

    # retried: live again, it keeps its keys for as long as it lives
    gen, _ = store.restart(RUN, expected_state=RunState.FAILED, reason="retry", now=T + 10)
    assert gen and {store.redis.ttl(key) for key in run_keys(store)} == {-1}


# -- complete_step ------------------------------------------------------------------------


def test_complete_step_first_checkpoint_wins_and_releases_the_lease(store):
    make_run(store, RunState.RUNNING)
    assert complete(store, output='"first"') == ('"first"', 0, False)
    assert lease(store) is None and lease_lapses(store) is None
    assert complete(store, token="tok-2", output='"second"', now=T + 2) == ('"first"', 0, False)
    assert store.checkpoint(RUN, STEP) == '"first"'
    assert len(of_type(store, events.STEP_COMPLETED)) == 1


def complete_last(store, *, token: str = TOKEN, output: str = '"out"', gen: int = 0,
                  now: float = T + 1) -> tuple[str, int, bool]:
    """complete_last_step's answer, whether the run ended as its last item."""
    won, resume_gen, _, ended = complete_last_ended(store, token=token, output=output, gen=gen,
                                                    now=now)
    return won, resume_gen, ended is not None


def complete_last_ended(store, *, token: str = TOKEN, output: str = '"out"', gen: int = 0,
                        now: float = T + 1) -> tuple[str, int, bool, Ended | None]:
    done = events.make(events.STEP_COMPLETED, RUN, step=STEP, attempt=1)
    succeeded = events.make(events.RUN_SUCCEEDED, RUN, output="run-out")
    return store.complete_last_step(RUN, STEP, token, output, now, done, WORKER, gen=gen,
                                    run_output_json='"run-out"', run_event=succeeded)


def test_complete_last_step_checkpoints_then_ends_the_run_in_one_call(store):
    make_run(store, RunState.RUNNING)
    assert complete_last(store, output='"first"') == ('"first"', 0, True)
    assert store.checkpoint(RUN, STEP) == '"first"' and lease(store) is None
    run = store.get_run(RUN)
    assert run["state"] == RunState.SUCCEEDED and run["output"] == '"run-out"'
    assert types(store)[-2:] == [events.STEP_COMPLETED, events.RUN_SUCCEEDED]


def test_complete_last_step_that_lost_to_another_checkpoint_leaves_the_run_live(store):
    make_run(store, RunState.RUNNING)
    complete(store, token="tok-2", output='"first"')
    assert complete_last(store, output='"second"') == ('"first"', 0, False)
    assert store.get_run(RUN)["state"] == RunState.RUNNING
    assert events.RUN_SUCCEEDED not in types(store)


@pytest.mark.parametrize("setup", ["cancelled", "restarted"])
def test_complete_last_step_of_a_run_no_longer_live_in_its_gen_does_not_end_it(store, setup):
    make_run(store, RunState.RUNNING)
    if setup == "cancelled":
        assert cancel(store) == 1
    else:
        assert store.restart(RUN, expected_state=RunState.RUNNING, reason="r", now=T + 1)[0] == 1
    won, _, over, ended = complete_last_ended(store, now=T + 2)
    assert won == '"out"' and not ended
    assert over == (setup == "cancelled")  # the caller gives its slot back
    assert events.RUN_SUCCEEDED not in types(store)


def test_the_end_of_a_run_names_its_concurrency_slot_so_it_is_not_read_again(store):
    slotted = {**record(), "concurrency_group": "tenant-a", "concurrency_limit": 2}
    assert store.create_run(slotted, queued_event(), None) == (RUN, True)
    store.redis.hset(store.keys.run(RUN), "state", RunState.RUNNING.value)
    assert complete_last_ended(store) == ('"out"', 0, False, Ended(("tenant-a", 2)))

    make_run(store, RunState.RUNNING, run_id="no-slot")
    assert finish_ended(store, "no-slot", call_id="call-1") == Ended(None)
    assert finish_ended(store, "no-slot", call_id="call-1") == Ended(None)  # its resend
    assert finish_ended(store, "no-slot", call_id="call-2") is None  # ended already


def test_complete_last_step_after_redis_forgot_its_scripts_loads_them(store):
    make_run(store, RunState.RUNNING)
    store.redis.script_flush()  # as a Redis restarted without its script cache
    assert complete_last(store) == ('"out"', 0, True)
    assert store.get_run(RUN)["state"] == RunState.SUCCEEDED
    assert types(store).count(events.STEP_COMPLETED) == 1


# -- emit ------------------------------------------------------------------------------------


def chunk(text: str = "hi") -> dict[str, Any]:
    return events.make(events.STEP_OUTPUT, RUN, step=STEP, attempt=1, chunk=text)


def test_emit_on_a_live_run_appends_and_returns_the_stream_id(store):
    make_run(store, RunState.RUNNING)
    stream_id = store.emit(RUN, 0, chunk(), emit_id="e-1")
    assert stream_id is not None
    assert [e.id for e in history(store) if e.type == events.STEP_OUTPUT] == [stream_id]


def test_emit_resent_returns_the_same_id_and_appends_once(store):
    make_run(store, RunState.RUNNING)
    first = store.emit(RUN, 0, chunk(), emit_id="e-1")
    assert store.emit(RUN, 0, chunk(), emit_id="e-1") == first
    assert len(of_type(store, events.STEP_OUTPUT)) == 1


@pytest.mark.parametrize(("state", "gen"), [
    pytest.param(RunState.RUNNING, 1, id="wrong-gen"),
    pytest.param(RunState.SUCCEEDED, 0, id="succeeded"),
    pytest.param(RunState.CANCELLED, 0, id="cancelled"),
])
def test_emit_outside_its_live_generation_returns_none(store, state, gen):
    make_run(store, state)
    assert store.emit(RUN, gen, chunk(), emit_id="e-1") is None
    assert of_type(store, events.STEP_OUTPUT) == []


# -- retrying -----------------------------------------------------------------------------


def retrying_event(failed: int = 1) -> dict[str, Any]:
    return events.make(events.STEP_RETRYING, RUN, step=STEP, attempt=failed, error="boom",
                       delay=0.1, next_attempt=failed + 1)


def test_retrying_returns_the_next_attempt_and_renews_the_lease(store):
    make_run(store, RunState.RUNNING)
    assert store.retrying(RUN, STEP, 0, TOKEN, retrying_event(), T + 1) == 2
    assert store.redis.hget(store.keys.attempts(RUN), STEP) == "2"
    assert lease(store)["attempt"] == 2
    assert lease_lapses(store) == T + 1 + lapse(store)


def test_retrying_resent_returns_the_same_attempt_and_records_it_once(store):
    make_run(store, RunState.RUNNING)
    assert store.retrying(RUN, STEP, 0, TOKEN, retrying_event(), T + 1) == 2
    assert store.retrying(RUN, STEP, 0, TOKEN, retrying_event(), T + 1) == 2
    assert store.redis.hget(store.keys.attempts(RUN), STEP) == "2"
    assert [e["attempt"] for e in of_type(store, events.STEP_RETRYING)] == [1]
    assert store.step_failures(RUN, STEP) == 1  # the retry budget's spent part, once


def test_a_checkpoint_after_a_restart_ends_its_restarts_in_a_row(store):
    """``flowkit status`` said "1 in a row without progress" of a run that had checkpointed
    every step since its restart: the count was judged at the next restart only."""
    make_run(store, RunState.RUNNING)
    store.redis.hset(store.keys.run(RUN), mapping={"restarts": 1, "stuck_restarts": 1})
    begin(store)
    complete(store)
    assert fields_of(store, "restarts", "stuck_restarts") == ("1", "0")


def test_retrying_counts_the_step_s_failures_until_a_retry_of_the_run_forgets_them(store):
    make_run(store, RunState.RUNNING)
    assert store.step_failures(RUN, STEP) == 0
    for failed in (1, 2):
        assert store.retrying(RUN, STEP, 0, TOKEN, retrying_event(failed), T + failed) == (
            failed + 1)
    assert store.step_failures(RUN, STEP) == 2 and store.step_failures(RUN, "1:other") == 0
    store.forget_failures(RUN)
    assert store.step_failures(RUN, STEP) == 0
    assert store.get_run(RUN)["state"] == RunState.RUNNING  # the rest of the record stays


@pytest.mark.parametrize(("state", "gen"), [
    pytest.param(RunState.RUNNING, 1, id="wrong-gen"),
    pytest.param(RunState.FAILED, 0, id="failed"),
    pytest.param(RunState.CANCELLED, 0, id="cancelled"),
])
def test_retrying_outside_its_live_generation_returns_none(store, state, gen):
    make_run(store, state)
    assert store.retrying(RUN, STEP, gen, TOKEN, retrying_event(), T + 2) is None
    assert of_type(store, events.STEP_RETRYING) == []


# -- fail / finish / cancel -----------------------------------------------------------------

ENDINGS = [
    pytest.param(fail, RunState.FAILED, events.RUN_FAILED, (True, True, False),
                 {"failed_step": STEP}, id="fail"),
    pytest.param(finish, RunState.SUCCEEDED, events.RUN_SUCCEEDED, (True, True, False),
                 {"output": '"out"'}, id="finish"),
    pytest.param(cancel, RunState.CANCELLED, events.RUN_CANCELLED, (1, 1, 0), {}, id="cancel"),
]
ENDING_ARGS = ("end", "state", "event_type", "answers", "fields")


@pytest.mark.parametrize(ENDING_ARGS, ENDINGS)
def test_ending_a_live_run(store, end, state, event_type, answers, fields):
    make_run(store, RunState.RUNNING)
    with done_channel(store) as next_message:
        assert end(store, call_id="call-1", now=T + 5) == answers[0]
        ended = json.loads(next_message())  # the ended run, as flowkit.wait() reads it
    run = store.get_run(RUN)
    assert dict(zip(ended["record"][::2], ended["record"][1::2], strict=True)) == run
    assert ended["attempts"] == [STEP, "1"]
    assert run["state"] == state and run["ended_by"] == "call-1"
    assert float(run["finished_at"]) == T + 5
    assert {name: run[name] for name in fields} == fields
    assert len(of_type(store, event_type)) == 1 and types(store)[-1] == event_type
    assert score(store, store.keys.running) is None and score(store, store.keys.queued) is None


def test_a_watcher_of_the_run_s_end_gets_the_ended_run_with_the_message(store):
    make_run(store, RunState.RUNNING)
    with store.watch_end(RUN) as watch:
        assert not watch.wait(0.01) and watch.ended is None
        assert fail(store, call_id="call-1", now=T + 5)
        assert watch.wait(5)
        record, attempts = watch.ended
    assert record == store.get_run(RUN) and record["state"] == RunState.FAILED
    assert attempts == {STEP: "1"}


def test_a_watcher_is_not_woken_by_its_own_subscription(store):
    """The subscription's confirmation is the first message on the connection: taken for
    an end, it sent every waiter back to read the run once more while it still ran."""
    make_run(store, RunState.RUNNING)
    with store.watch_end(RUN) as watch:
        began = time.monotonic()
        assert not watch.wait(0.3)
        assert time.monotonic() - began >= 0.3  # it waited the whole time for an end


def test_watchers_one_after_another_share_one_connection(store):
    """A watch hands its pub/sub connection to the next: a new one per ``result()`` was a
    TCP connection, its handshake and a disconnect each time."""
    for n in range(5):
        make_run(store, RunState.RUNNING, run_id=f"run-{n}")
    with store.watch_end("run-0") as watch:  # the first may open one
        assert not watch.wait(0.01)
        kept = watch._pubsub.connection
        socket = kept._sock  # the TCP connection: a reconnect would make another
    for n in range(1, 5):
        with store.watch_end(f"run-{n}") as watch:
            # this store's own connection (Redis's client list also holds the watches of
            # the session's other processes, which come and go: it made this test flaky)
            assert watch._pubsub.connection is kept and kept._sock is socket
            assert fail(store, f"run-{n}", now=T + 5)
            assert watch.wait(5) and watch.ended[0]["id"] == f"run-{n}"


def test_a_kept_connection_is_reused_after_its_health_check_falls_due(store):
    """redis-py pings a pub/sub connection idle for 30 s on its next read: once nothing
    was subscribed, that ``PONG`` was never read, and the connection was thrown away."""
    make_run(store, RunState.RUNNING)
    with store.watch_end(RUN) as watch:
        assert not watch.wait(0.01)
        first = watch._pubsub.connection
        socket = first._sock  # the TCP connection: a reconnect would make another
    for kept in store._subscriptions._idle:  # as after 30 s idle
        kept.connection.next_health_check = 0
    with store.watch_end(RUN) as watch:
        assert watch._pubsub.connection is first  # this store's own, as in the test above
        assert not watch.wait(0.01)
        assert fail(store, now=T + 5)
        assert watch.wait(5) and watch.ended[0]["state"] == RunState.FAILED
    assert first._sock is socket


def test_kept_connections_take_no_slot_of_the_store_s_pool(store):
    """A kept connection stays checked out of its pool: in the store's, three watches
    left a pool of two with no connection for the store's own commands."""
    small = Store(store.settings.replace(connection_pool_size=2, redis_retry_seconds=1.0))
    with contextlib.ExitStack() as watches:
        for n in range(3):
            watches.enter_context(small.watch_end(f"run-{n}"))
    assert small.redis.ping() and small.redis.ping()
    assert small.redis.connection_pool.max_connections == 2  # the store's pool stays small


@contextlib.contextmanager
def slow_replies(redis_url: str, delay: float) -> Iterator[str]:
    """A TCP proxy to Redis that hands its replies on ``delay`` seconds late (a remote
    Redis, a busy link); yields its URL."""
    target = redis.connection.parse_url(redis_url)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def pump(source: socket.socket, sink: socket.socket, late: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if late:
                    time.sleep(late)  # the link's own delay, not a synchronisation
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                server = socket.create_connection((target.get("host", "127.0.0.1"),
                                                   target.get("port", 6379)))
                threading.Thread(target=pump, args=(client, server, 0), daemon=True).start()
                threading.Thread(target=pump, args=(server, client, delay),
                                 daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"redis://127.0.0.1:{port}/{target.get('db', 0)}"
    finally:
        listener.close()


def test_an_end_still_on_its_way_does_not_wake_the_next_watcher_of_the_same_run(store):
    """The end a watch left unread can still be on the wire when the next watch of the
    same run (a restarted one) takes the kept connection: it woke that watch with the
    earlier end. The reply to the watch's UNSUBSCRIBE comes after every message of its
    channel, so the next watch reads up to it, or takes another connection."""
    make_run(store, RunState.RUNNING)
    with slow_replies(store.settings.redis_url, 0.2) as url:
        remote = Store(store.settings.replace(redis_url=url))
        with remote.watch_end(RUN) as watch:
            assert not watch.wait(0.5)  # subscribed: its confirmation came, late
            assert fail(store, call_id="call-1", now=T + 5)  # on its way, never read
        with remote.watch_end(RUN) as watch:  # the run restarted; the next waiter
            assert not watch.wait(0.6) and watch.ended is None


def test_a_kept_connection_s_earlier_end_does_not_wake_the_next_watcher(store):
    make_run(store, RunState.RUNNING)
    make_run(store, RunState.RUNNING, run_id="run-2")
    with store.watch_end(RUN):
        assert fail(store, call_id="call-1", now=T + 5)  # published, never read
    with store.watch_end("run-2") as watch:  # on the same connection
        assert not watch.wait(0.3) and watch.ended is None
        assert fail(store, "run-2", now=T + 6)
        assert watch.wait(5) and watch.ended[0]["id"] == "run-2"


def test_a_kept_connection_that_redis_closed_reconnects_for_the_next_watcher(store):
    make_run(store, RunState.RUNNING)
    with store.watch_end(RUN) as watch:
        assert not watch.wait(0.01)
    kept = [c["id"] for c in store.redis.client_list() if c["cmd"] == "unsubscribe"]
    assert kept  # the watch's connection, idle now: an idle timeout or a proxy closes it
    for client_id in kept:
        store.redis.client_kill_filter(_id=client_id)
    with store.watch_end(RUN) as watch:
        assert fail(store, now=T + 5)
        assert watch.wait(5) and watch.ended[0]["state"] == RunState.FAILED


@pytest.mark.parametrize(ENDING_ARGS, ENDINGS)
def test_ending_resent_answers_as_the_first_time_and_appends_nothing(
    store, end, state, event_type, answers, fields,
):
    make_run(store, RunState.RUNNING)
    end(store, call_id="call-1", now=T + 5)
    with done_channel(store) as next_message:
        assert end(store, call_id="call-1", now=T + 6) == answers[1]
        mark_end_of_channel(store)
        assert next_message() == "marker"  # the resend published nothing
    assert len(of_type(store, event_type)) == 1
    assert float(store.get_run(RUN)["finished_at"]) == T + 5


@pytest.mark.parametrize(ENDING_ARGS, ENDINGS)
def test_ending_an_ended_run_answers_no(store, end, state, event_type, answers, fields):
    make_run(store, RunState.RUNNING)
    end(store, call_id="call-1", now=T + 5)
    with done_channel(store) as next_message:
        assert end(store, call_id="call-2", now=T + 6) == answers[2]
        mark_end_of_channel(store)
        assert next_message() == "marker"
    assert store.get_run(RUN)["ended_by"] == "call-1"
    assert len(of_type(store, event_type)) == 1


@pytest.mark.parametrize(("end", "answer"), [
    pytest.param(fail, False, id="fail"),
    pytest.param(finish, False, id="finish"),
    pytest.param(cancel, -1, id="cancel"),
])
def test_ending_an_unknown_run(store, end, answer):
    assert end(store, call_id="call-1") == answer
    assert store.get_run(RUN) == {}


@pytest.mark.parametrize("end", [fail, finish])
def test_ending_in_another_generation_answers_no(store, end):
    make_run(store, RunState.RUNNING)
    assert end(store, call_id="call-1", gen=1) is False
    assert store.get_run(RUN)["state"] == RunState.RUNNING
    assert not set(types(store)) & events.TERMINAL


def test_fail_releases_the_failing_steps_lease_and_records_step_failed(store):
    make_run(store, RunState.RUNNING)
    assert fail(store, call_id="call-1")
    assert loads(store.get_run(RUN)["error"]) == ERROR
    assert lease(store) is None and lease_lapses(store) is None
    assert types(store)[-2:] == [events.STEP_FAILED, events.RUN_FAILED]


# -- restart -----------------------------------------------------------------------------------

#: a state the caller may have seen instead of the run's actual one
OTHER_STATE = {RunState.RUNNING: RunState.QUEUED, RunState.QUEUED: RunState.RUNNING,
               RunState.FAILED: RunState.RUNNING}
SUPERSEDED = [{"step": STEP, "attempt": 1, "worker": WORKER}]


def _lease_case(store, holds: bool):
    """Step STEP's lease (lapsing at T + lapse) has lapsed by ``now``, or not."""
    make_run(store, RunState.RUNNING)
    now = T + lapse(store) + 1 if holds else T + lapse(store) / 2
    return RunState.RUNNING, {"now": now, "step": STEP}, SUPERSEDED


def _queued_case(store, holds: bool):
    """Queued at T: since before ``before``, or not."""
    make_run(store)
    return RunState.QUEUED, {"now": T + 100, "before": T + 50 if holds else T - 50}, []


def _orphaned_case(store, holds: bool):
    """Between steps since T + 1; the holder (WORKER) beat last at T + 2, or after ``before``."""
    make_run(store, RunState.RUNNING)
    complete(store, now=T + 1)
    store.heartbeat([], WORKER, T + 2 if holds else T + 80)
    return RunState.RUNNING, {"now": T + 100, "before": T + 50}, []


def _stalled_case(store, holds: bool):
    """Between steps since T + 1: quiet since before ``before``, or not."""
    make_run(store, RunState.RUNNING)
    complete(store, now=T + 1)
    return RunState.RUNNING, {"now": T + 100, "before": T + 50 if holds else T}, []


def _stranded_case(store, holds: bool):
    """Between steps since T + 1 (quiet since before ``before``): seen stranded once at
    T + 10 (before ``before``), or not yet."""
    make_run(store, RunState.RUNNING)
    complete(store, now=T + 1)
    if holds:
        assert stranded(store, now=T + 10, before=T + 5) == (0, RestartRefusal.ALIVE)
    return RunState.RUNNING, {"now": T + 100, "before": T + 50}, []


def stranded(store, *, now: float, before: float,
             state: RunState = RunState.RUNNING) -> tuple[int, RestartRefusal | None]:
    return store.restart(RUN, expected_state=state, reason="why", now=now,
                         cause=RestartCause.STRANDED, before=before)


def _requested_case(store, holds: bool):
    make_run(store, RunState.FAILED)
    return RunState.FAILED, {"now": T + 100}, []


RESTART_CASES = {
    RestartCause.LEASE_LAPSED: _lease_case,
    RestartCause.QUEUED_TOO_LONG: _queued_case,
    RestartCause.ORPHANED: _orphaned_case,
    RestartCause.STALLED: _stalled_case,
    RestartCause.STRANDED: _stranded_case,
    RestartCause.REQUESTED: _requested_case,
}


def _expected_refusal(cause: RestartCause, holds: bool, state_ok: bool) -> RestartRefusal | None:
    if cause == RestartCause.LEASE_LAPSED and not holds:
        return RestartRefusal.ALIVE  # the lease is checked before the state
    if not state_ok:
        return RestartRefusal.STATE
    return None if holds else RestartRefusal.ALIVE


def _restart_table() -> list:
    table = []
    for cause, holds, state_ok in product(RESTART_CASES, (True, False), (True, False)):
        if cause == RestartCause.REQUESTED and not holds:
            continue  # a request has no condition beyond the state
        condition = "holds" if holds else "not-holds"
        state = "state-expected" if state_ok else "state-not-expected"
        table.append(pytest.param(cause, holds, state_ok,
                                  _expected_refusal(cause, holds, state_ok),
                                  id=f"{cause}-{condition}-{state}"))
    return table


def assert_restarted(store, gen: int, *, now: float, reason: str, superseded: list) -> None:
    assert gen == 1
    run = store.get_run(RUN)
    assert (run["gen"], run["state"]) == ("1", RunState.QUEUED)
    assert run["error"] == run["failed_step"] == "" and "ended_by" not in run
    (restarted,) = of_type(store, events.RUN_RESTARTED)
    assert (restarted["reason"], restarted["gen"]) == (reason, 1)
    assert sorted(restarted.get("superseded", []), key=lambda s: s["step"]) == superseded
    assert store.redis.hlen(store.keys.inflight(RUN)) == 0 and leases_of(store) == []
    assert score(store, store.keys.queued) == now and score(store, store.keys.running) is None


@pytest.mark.parametrize(("cause", "holds", "state_ok", "refusal"), _restart_table())
def test_restart(store, cause, holds, state_ok, refusal):
    actual, kwargs, superseded = RESTART_CASES[cause](store, holds)
    expected = actual if state_ok else OTHER_STATE[actual]
    leases_before = leases_of(store)
    gen, why = store.restart(RUN, expected_state=expected, reason="why", cause=cause,
                             max_restarts=5, **kwargs)
    assert why == refusal
    if refusal is None:
        assert_restarted(store, gen, now=kwargs["now"], reason="why", superseded=superseded)
        assert store.get_run(RUN)["restarts"] == "1"
        return
    assert gen == 0
    run = store.get_run(RUN)
    assert (run["gen"], run["state"], run["restarts"]) == ("0", actual, "0")
    assert of_type(store, events.RUN_RESTARTED) == []
    if cause == RestartCause.LEASE_LAPSED and refusal == RestartRefusal.STATE:
        assert lease(store) is None and leases_of(store) == []  # released: not asked again
    else:
        assert leases_of(store) == leases_before


@pytest.mark.parametrize("cause", list(RestartCause))
def test_restart_of_an_unknown_run_is_gone(store, cause):
    assert store.restart("unknown", expected_state=RunState.RUNNING, reason="why", now=T,
                         cause=cause, step=STEP, before=T) == (0, RestartRefusal.GONE)


def test_restart_lease_lapsed_of_a_cancelled_run_releases_the_lease(store):
    make_run(store, RunState.RUNNING)
    assert cancel(store, now=T + 1) == 1  # a cancel leaves the step's lease in place
    gen, why = store.restart(RUN, expected_state=RunState.RUNNING, reason="why",
                             now=T + lapse(store) + 1, cause=RestartCause.LEASE_LAPSED, step=STEP)
    assert (gen, why) == (0, RestartRefusal.STATE)
    assert lease(store) is None and store.lapsed_leases(T + 1000) == []
    assert store.get_run(RUN)["state"] == RunState.CANCELLED


@pytest.mark.parametrize(("holder_beat", "refusal"), [
    pytest.param(None, None, id="holder-never-seen"),
    pytest.param(T + 2, None, id="holder-silent"),
    pytest.param(T + 80, RestartRefusal.ALIVE, id="holder-beating"),
])
def test_restart_orphaned_depends_on_the_holders_heartbeat(store, holder_beat, refusal):
    make_run(store, RunState.RUNNING)
    complete(store, now=T + 1)
    if holder_beat is not None:
        store.heartbeat([], WORKER, holder_beat)
    gen, why = store.restart(RUN, expected_state=RunState.RUNNING, reason="why", now=T + 100,
                             cause=RestartCause.ORPHANED, before=T + 50)
    assert why == refusal and (gen == 1) == (refusal is None)


@pytest.mark.parametrize("cause", [RestartCause.ORPHANED, RestartCause.STALLED,
                                   RestartCause.STRANDED])
def test_restart_between_steps_is_refused_while_a_step_is_in_flight(store, cause):
    make_run(store, RunState.RUNNING)  # quiet since T, but STEP holds a lease
    gen, why = store.restart(RUN, expected_state=RunState.RUNNING, reason="why", now=T + 100,
                             cause=cause, before=T + 50)
    assert (gen, why) == (0, RestartRefusal.ALIVE)
    assert lease(store) is not None


def test_restart_with_steps_in_flight_supersedes_each_attempt(store):
    make_run(store, RunState.RUNNING)
    begin(store, step="1:b", token="tok-2", worker="w2", now=T + 1)
    gen, why = store.restart(RUN, expected_state=RunState.RUNNING, reason="handover", now=T + 2)
    assert why is None
    assert_restarted(store, gen, now=T + 2, reason="handover", superseded=[
        {"step": STEP, "attempt": 1, "worker": WORKER},
        {"step": "1:b", "attempt": 1, "worker": "w2"}])


@pytest.mark.parametrize("cause", [RestartCause.REQUESTED, RestartCause.QUEUED_TOO_LONG])
def test_restart_two_without_progress_with_max_two_give_up_on_the_next(store, cause):
    make_run(store)  # queued at T; nothing ever checkpoints
    for gen in (1, 2):
        now = T + 100 * gen
        assert store.restart(RUN, expected_state=RunState.QUEUED, reason="why", now=now,
                             cause=cause, before=now - 50, max_restarts=2) == (gen, None)
        assert fields_of(store, "restarts", "stuck_restarts", "checkpoints_at_restart") == (
            str(gen), str(gen), "0")
    gave_up = {"type": "WorkerLost", "message": "gave up", "attempts": []}
    assert store.restart(RUN, expected_state=RunState.QUEUED, reason="why", now=T + 300,
                         cause=cause, before=T + 250, max_restarts=2,
                         give_up_error=gave_up) == (0, RestartRefusal.GAVE_UP)
    assert fields_of(store, "state", "restarts") == (RunState.FAILED, "2")
    # its attempts a list, as every other failure's (cjson wrote the empty one as {})
    assert json.loads(store.get_run(RUN)["error"])["attempts"] == []
    assert of_type(store, events.RUN_FAILED)[0]["error"]["attempts"] == []


def lapsed_restart(store, step: str, now: float, max_restarts: int):
    return store.restart(RUN, expected_state=RunState.RUNNING, reason="why", now=now,
                         cause=RestartCause.LEASE_LAPSED, step=step, max_restarts=max_restarts)


@pytest.mark.parametrize(("progress", "second"), [
    pytest.param(True, (2, None), id="progress-not-counted"),
    pytest.param(False, (0, RestartRefusal.GAVE_UP), id="no-progress-gives-up"),
])
def test_restart_after_progress_does_not_count_toward_give_up(store, progress, second):
    make_run(store, RunState.RUNNING)  # STEP leased since T
    now = T + lapse(store) + 1
    assert lapsed_restart(store, STEP, now, max_restarts=1) == (1, None)
    assert fields_of(store, "restarts", "stuck_restarts", "checkpoints_at_restart") == (
        "1", "1", "0")
    # generation 1: STEP runs again; with progress it checkpoints and OTHER's worker is lost,
    # without, STEP's worker is lost again
    assert begin(store, gen=1, token="tok-3", now=now + 1).status == StepStart.RUN
    lost = STEP
    if progress:
        complete(store, token="tok-3", now=now + 2)
        begin_other(store, gen=1, now=now + 3)
        lost = OTHER
    assert lapsed_restart(store, lost, now + 4 + lapse(store), max_restarts=1) == second
    if progress:
        assert fields_of(store, "restarts", "stuck_restarts", "checkpoints_at_restart") == (
            "2", "1", "1")
        assert store.get_run(RUN)["state"] == RunState.QUEUED
    else:
        assert fields_of(store, "state", "restarts") == (RunState.FAILED, "1")


def test_restart_total_keeps_counting_restarts_after_progress(store):
    make_run(store)
    now = T
    for gen in range(3):  # each generation checkpoints a step, then loses another's worker
        now += 1
        done, lost = f"{gen}:done", f"{gen}:lost"
        assert begin(store, gen=gen, step=done, token=f"a{gen}", now=now).status == StepStart.RUN
        complete(store, step=done, token=f"a{gen}", now=now)
        assert begin(store, gen=gen, step=lost, token=f"b{gen}", now=now).status == StepStart.RUN
        now += lapse(store) + 1
        assert lapsed_restart(store, lost, now, max_restarts=1) == (gen + 1, None)
        assert fields_of(store, "restarts", "stuck_restarts") == (str(gen + 1), "1")
    assert begin(store, gen=3, step="3:lost", token="b3", now=now + 1).status == StepStart.RUN
    assert lapsed_restart(store, "3:lost", now + 2 + lapse(store),
                          max_restarts=1) == (0, RestartRefusal.GAVE_UP)
    assert fields_of(store, "state", "restarts") == (RunState.FAILED, "3")


def give_up_error() -> dict[str, Any]:
    return {"type": "WorkerLost", "message": "gave up", "attempts": []}


@pytest.mark.parametrize("restarts", [0, 2])
def test_restart_past_max_restarts_fails_the_run_during_its_step(store, restarts):
    make_run(store, RunState.RUNNING, restarts=restarts)
    now = T + lapse(store) + 1
    with done_channel(store) as next_message:
        result = store.restart(RUN, expected_state=RunState.RUNNING, reason="why", now=now,
                               cause=RestartCause.LEASE_LAPSED, step=STEP,
                               max_restarts=restarts, give_up_error=give_up_error(),
                               call_id="call-1")
        assert result == (0, RestartRefusal.GAVE_UP)
        ended = json.loads(next_message())["record"]
        assert ended[ended.index("state") + 1] == RunState.FAILED
    run = store.get_run(RUN)
    assert (run["state"], run["ended_by"], run["failed_step"]) == (RunState.FAILED, "call-1", STEP)
    assert float(run["finished_at"]) == now and run["gen"] == "0"
    (failed,) = of_type(store, events.RUN_FAILED)
    assert failed["step"] == STEP and failed["error"]["step"] == STEP
    assert failed["error"]["message"] == f"gave up during step {STEP}"
    assert loads(run["error"])["message"] == f"gave up during step {STEP}"
    assert lease(store) is None and leases_of(store) == []
    assert score(store, store.keys.running) is None and score(store, store.keys.queued) is None
    assert of_type(store, events.RUN_RESTARTED) == []


def test_restart_past_max_restarts_with_no_step_in_flight_keeps_the_message(store):
    make_run(store, restarts=1)
    result = store.restart(RUN, expected_state=RunState.QUEUED, reason="why", now=T + 100,
                           cause=RestartCause.QUEUED_TOO_LONG, before=T + 50, max_restarts=1,
                           give_up_error=give_up_error(), call_id="call-1")
    assert result == (0, RestartRefusal.GAVE_UP)
    (failed,) = of_type(store, events.RUN_FAILED)
    assert failed["error"]["message"] == "gave up" and failed["step"] == ""
    assert store.get_run(RUN)["failed_step"] == ""


def test_restart_past_max_restarts_without_a_give_up_error_still_fails_the_run(store):
    make_run(store, RunState.RUNNING)
    result = store.restart(RUN, expected_state=RunState.RUNNING, reason="why",
                           now=T + lapse(store) + 1, cause=RestartCause.LEASE_LAPSED, step=STEP,
                           max_restarts=0)
    assert result == (0, RestartRefusal.GAVE_UP)
    assert store.get_run(RUN)["state"] == RunState.FAILED


def test_restart_give_up_resent_answers_gave_up_and_appends_nothing(store):
    make_run(store, RunState.RUNNING, restarts=1)
    kwargs = {"expected_state": RunState.RUNNING, "reason": "why", "now": T + lapse(store) + 1,
              "cause": RestartCause.LEASE_LAPSED, "step": STEP, "max_restarts": 1,
              "give_up_error": give_up_error(), "call_id": "call-1"}
    assert store.restart(RUN, **kwargs) == (0, RestartRefusal.GAVE_UP)
    with done_channel(store) as next_message:
        assert store.restart(RUN, **kwargs) == (0, RestartRefusal.GAVE_UP)
        mark_end_of_channel(store)
        assert next_message() == "marker"
    assert len(of_type(store, events.RUN_FAILED)) == 1


def test_restart_resent_returns_the_same_generation_once(store):
    make_run(store, RunState.RUNNING)
    kwargs = {"expected_state": RunState.RUNNING, "reason": "why", "now": T + lapse(store) + 1,
              "cause": RestartCause.LEASE_LAPSED, "step": STEP, "max_restarts": 3,
              "call_id": "call-1"}
    assert store.restart(RUN, **kwargs) == (1, None)
    assert store.restart(RUN, **kwargs) == (1, None)
    run = store.get_run(RUN)
    assert (run["gen"], run["restarts"], run["state"]) == ("1", "1", RunState.QUEUED)
    assert len(of_type(store, events.RUN_RESTARTED)) == 1


def test_restart_requested_is_not_counted(store):
    make_run(store, RunState.FAILED, restarts=3)
    assert store.restart(RUN, expected_state=RunState.FAILED, reason="retry", now=T + 2,
                         max_restarts=-1) == (1, None)
    assert fields_of(store, "restarts", "stuck_restarts", "checkpoints_at_restart") == (
        "3", "3", "0")


# -- handoff (a message in the broker) ---------------------------------------------------


@pytest.mark.parametrize(("handoff", "refusal"), [
    pytest.param(None, None, id="no-handoff"),
    pytest.param((0, T + 0.5), None, id="handoff-older-than-the-checkpoint"),
    pytest.param((0, T + 1), RestartRefusal.ALIVE, id="handoff-with-the-checkpoint"),
    pytest.param((0, T + 3), RestartRefusal.ALIVE, id="handoff-after-the-checkpoint"),
    pytest.param((1, T + 3), None, id="handoff-of-another-gen"),
])
def test_restart_orphaned_is_refused_while_the_next_message_is_in_the_broker(
    store, handoff, refusal,
):
    """Between steps since T + 1 (STEP checkpointed); the holder beat last at T + 2."""
    make_run(store, RunState.RUNNING)
    if handoff is not None and handoff[1] < T + 1:
        store.handed_off(RUN, *handoff)  # STEP's own message, before it checkpointed
    complete(store, now=T + 1)
    if handoff is not None and handoff[1] >= T + 1:
        store.handed_off(RUN, *handoff)  # the next step's message
    store.heartbeat([], WORKER, T + 2)
    current = handoff is not None and handoff[0] == 0
    assert fields_of(store, "checkpoint_at", "handoff_at") == (
        str(T + 1), str(handoff[1]) if current else None)
    gen, why = store.restart(RUN, expected_state=RunState.RUNNING, reason="why", now=T + 100,
                             cause=RestartCause.ORPHANED, before=T + 50)
    assert why == refusal and gen == (0 if refusal else 1)
    assert store.get_run(RUN)["state"] == (RunState.RUNNING if refusal else RunState.QUEUED)


def test_a_run_seen_stranded_twice_a_deadline_apart_restarts(store):
    """A worker that took its message a moment ago begins it within that moment: the first
    sighting only records the run's last sign of life; the same one seen ``before`` or
    longer after restarts the run, a sighting sooner does not. Whoever held it last, and
    whether its next message was handed off, does not matter."""
    make_run(store, RunState.RUNNING)
    complete(store, now=T + 1)
    store.handed_off(RUN, 0, T + 2)
    store.heartbeat([], WORKER, T + 12)  # its holder beats on
    assert stranded(store, now=T + 10, before=T + 5) == (0, RestartRefusal.ALIVE)
    assert tuple(map(float, fields_of(store, "stranded_seen", "stranded_at"))) == (T + 1, T + 10)
    assert stranded(store, now=T + 12, before=T + 9) == (0, RestartRefusal.ALIVE)
    assert stranded(store, now=T + 13, before=T + 10) == (1, None)
    (restarted,) = of_type(store, events.RUN_RESTARTED)
    assert restarted["reason"] == "why" and "superseded" not in restarted


def test_a_queued_run_seen_stranded_twice_a_deadline_apart_restarts(store):
    """Its sign of life is when it was queued: a worker that took its message and died
    left it queued with nothing in its queues."""
    make_run(store)  # queued at T
    queued = RunState.QUEUED
    assert stranded(store, now=T + 10, before=T + 5, state=queued) == (0, RestartRefusal.ALIVE)
    assert stranded(store, now=T + 12, before=T + 9, state=queued) == (0, RestartRefusal.ALIVE)
    assert stranded(store, now=T + 13, before=T + 10, state=queued) == (1, None)
    assert store.get_run(RUN)["state"] == RunState.QUEUED and score(store, store.keys.queued) == T + 13


def test_a_stale_first_sighting_is_taken_as_a_first_one(store):
    """Sweeps between found a message in its queues (a redelivery, a drain's requeue): a
    sighting older than two spans says nothing of this moment."""
    make_run(store, RunState.RUNNING)
    complete(store, now=T + 1)
    assert stranded(store, now=T + 10, before=T + 5) == (0, RestartRefusal.ALIVE)
    assert stranded(store, now=T + 100, before=T + 95) == (0, RestartRefusal.ALIVE)
    assert float(fields_of(store, "stranded_at")[0]) == T + 100
    assert stranded(store, now=T + 105, before=T + 100) == (1, None)


def test_a_sign_of_life_after_a_sighting_makes_the_next_one_the_first(store):
    """The run went on (a step began and checkpointed): the sighting before says nothing
    of where it is now."""
    make_run(store, RunState.RUNNING)
    complete(store, now=T + 1)
    assert stranded(store, now=T + 10, before=T + 5) == (0, RestartRefusal.ALIVE)
    begin(store, step="1:b", token="tok-2", now=T + 15)
    complete(store, step="1:b", token="tok-2", now=T + 20)
    assert stranded(store, now=T + 40, before=T + 30) == (0, RestartRefusal.ALIVE)
    assert tuple(map(float, fields_of(store, "stranded_seen", "stranded_at"))) == (T + 20, T + 40)
    assert stranded(store, now=T + 50, before=T + 40) == (1, None)


def test_handed_off_for_another_generation_changes_nothing(store):
    make_run(store, RunState.RUNNING)
    before = store.get_run(RUN)
    store.handed_off(RUN, 1, T + 1)
    assert store.get_run(RUN) == before


def test_handed_off_on_an_unknown_run_creates_no_key(store):
    store.handed_off("unknown", 0, T)
    assert store.redis.exists(*store.keys.script_keys("unknown")) == 0
    # The session's worker keeps beating into its presence keys meanwhile; nothing else.
    presence = {store.keys.workers, store.keys.nodes}
    assert set(store.redis.keys("*")) <= presence


# -- begin_wait ----------------------------------------------------------------------------


@pytest.mark.parametrize(("due", "other_in_flight"), [
    pytest.param(None, False, id="no-deadline-alone"),
    pytest.param(T + 60, False, id="deadline-alone"),
    pytest.param(None, True, id="no-deadline-another-step-in-flight"),
    pytest.param(T + 60, True, id="deadline-another-step-in-flight"),
])
def test_begin_wait_pauses_the_step(store, due, other_in_flight):
    make_run(store, RunState.RUNNING)
    if other_in_flight:
        begin_other(store)
    assert pause(store, due=due, now=T + 1) == (WaitOutcome.PAUSED, None, 0)
    key, spec = wait_key(), wait_spec(due=due)
    assert open_waits(store) == {key: spec}
    assert store.load_run(RUN)[2] == [spec]
    assert timer(store, key) == due
    assert len(of_type(store, events.RUN_WAITING)) == 1 and types(store)[-1] == events.RUN_WAITING
    assert lease(store) is None and lease_lapses(store) is None  # the worker slot is free
    assert store.checkpoint(RUN, key) is None
    run = store.get_run(RUN)
    if other_in_flight:
        assert run["state"] == RunState.RUNNING and leases_of(store) == [f"{RUN} {OTHER}"]
        assert score(store, store.keys.running) is not None
    else:
        assert run["state"] == RunState.WAITING and leases_of(store) == []
        assert score(store, store.keys.running) is None


def test_begin_wait_then_the_last_step_in_flight_completes_and_the_run_waits(store):
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store) == (WaitOutcome.PAUSED, None, 0)
    assert complete(store, step=OTHER, token="tok-2", now=T + 2) == ('"out"', 0, False)
    run = store.get_run(RUN)
    assert (run["state"], run["gen"]) == (RunState.WAITING, "0")
    assert score(store, store.keys.running) is None


def _answer_saved(store):
    """An event wait's look-back found the event before the wait began (save_checkpoint)."""
    make_run(store, RunState.RUNNING)
    store.save_checkpoint(RUN, wait_key(), YES)
    return 0, TOKEN


def _answer_delivered(store):
    """Answered while paused: the resumed generation's attempt meets the wait again."""
    waiting_run(store)
    assert deliver(store, now=T + 5) == (WaitOutcome.RESUMED, 1)
    assert begin(store, gen=1, token="tok-3", now=T + 6).status == StepStart.RUN
    return 1, "tok-3"


@pytest.mark.parametrize("setup", [
    pytest.param(_answer_saved, id="saved-before"),
    pytest.param(_answer_delivered, id="delivered-while-paused"),
])
def test_begin_wait_when_the_answer_is_checkpointed_is_ready(store, setup):
    gen, token = setup(store)
    waiting_before = of_type(store, events.RUN_WAITING)
    assert pause(store, gen=gen, token=token, due=T + 60, now=T + 7) == (WaitOutcome.READY, YES, 0)
    assert lease(store)["token"] == token  # the step goes on: it keeps its lease
    assert open_waits(store) == {} and timer(store, wait_key()) is None
    assert of_type(store, events.RUN_WAITING) == waiting_before
    assert store.get_run(RUN)["state"] == RunState.RUNNING


def _stopped_ended(state: RunState):
    def setup(store):
        make_run(store, state)
        return 0
    return setup


def _stopped_other_gen(store):
    make_run(store, RunState.RUNNING)
    return 1


def _stopped_restarted(store):
    """The attempt of generation 0 pauses after the run restarted."""
    make_run(store, RunState.RUNNING)
    assert store.restart(RUN, expected_state=RunState.RUNNING, reason="r", now=T + 1)[0] == 1
    return 0


def test_begin_wait_of_an_event_answered_early_records_the_wait_as_answered(store):
    """The event came between the waker and begin_wait: READY, and the wait's spec (its
    floor) never reached the answered waits, so a later look-back went behind it."""
    make_run(store, RunState.RUNNING)
    key = wait_key(WaitKind.EVENT, "status:1")
    assert deliver(store, by="key", match=key, answer='{"event":1}', now=T + 2) == (
        WaitOutcome.DELIVERED, 0)
    assert pause(store, kind=WaitKind.EVENT, name="status:1") == (
        WaitOutcome.READY, '{"event":1}', 0)
    assert loads(store.redis.hget(store.keys.answered(RUN), key))["name"] == "status:1"


def test_the_pause_point_is_the_wait_where_the_step_s_latest_attempt_paused(store):
    """A resumed attempt replays the step up to the wait an earlier attempt paused at: the
    answered wait of that step with the latest attempt before it; an event answered early
    (begin_wait READY: the step never paused there) is none, nor a later attempt's."""
    make_run(store, RunState.RUNNING)
    assert pause(store, attempt=1) == (WaitOutcome.PAUSED, None, 0)
    outcome, gen = deliver(store)
    assert outcome == WaitOutcome.RESUMED
    early = wait_key(WaitKind.EVENT, "status:1")
    assert deliver(store, by="key", match=early, answer='{"event":1}', now=T + 6)[0] == (
        WaitOutcome.DELIVERED)
    assert pause(store, kind=WaitKind.EVENT, name="status:1", attempt=2, gen=gen)[0] == (
        WaitOutcome.READY)
    assert loads(store.redis.hget(store.keys.answered(RUN), early)) == {
        "paused": False, **wait_spec(WaitKind.EVENT, "status:1", attempt=2)}
    paused_at = wait_key(WaitKind.INPUT, INPUT)
    assert store.pause_point(RUN, STEP, 3) == paused_at
    assert store.pause_point(RUN, STEP, 2) == paused_at
    assert store.pause_point(RUN, STEP, 1) is None  # no attempt before it paused
    assert store.pause_point(RUN, "1:other", 3) is None


@pytest.mark.parametrize("setup", [
    pytest.param(_stopped_ended(RunState.SUCCEEDED), id="succeeded"),
    pytest.param(_stopped_ended(RunState.FAILED), id="failed"),
    pytest.param(_stopped_ended(RunState.CANCELLED), id="cancelled"),
    pytest.param(_stopped_other_gen, id="another-gen"),
    pytest.param(_stopped_restarted, id="restarted"),
])
def test_begin_wait_of_a_run_that_moved_on_is_stopped(store, setup):
    gen = setup(store)
    run_before = store.get_run(RUN)
    assert pause(store, gen=gen, due=T + 60, now=T + 2) == (WaitOutcome.STOPPED, None, 0)
    assert open_waits(store) == {} and timers_of(store) == []
    assert of_type(store, events.RUN_WAITING) == []
    assert store.get_run(RUN) == run_before


def test_begin_wait_met_again_after_a_restart_keeps_its_first_deadline(store):
    make_run(store, RunState.RUNNING)
    begin_other(store, now=T + 1)
    assert pause(store, due=T + 60, now=T + 1) == (WaitOutcome.PAUSED, None, 0)
    later = T + 1 + lapse(store) + 1  # OTHER's worker is lost: its lease lapsed
    assert lapsed_restart(store, OTHER, later, max_restarts=3) == (1, None)
    assert list(open_waits(store)) == [wait_key()]  # a restart keeps the open waits
    assert begin(store, gen=1, token="tok-3", now=later + 1).status == StepStart.RUN
    assert pause(store, gen=1, token="tok-3", due=later + 100, now=later + 2) == (
        WaitOutcome.PAUSED, None, 0)
    assert timer(store, wait_key()) == T + 60
    assert open_waits(store) == {wait_key(): wait_spec(due=T + 60)}
    assert len(of_type(store, events.RUN_WAITING)) == 1
    assert lease(store) is None and leases_of(store) == []
    assert fields_of(store, "state", "gen") == (RunState.WAITING, "1")


# -- deliver ----------------------------------------------------------------------------------

BY_NAME_OR_KEY = [
    pytest.param(WaitKind.INPUT, INPUT, id="by-name"),
    pytest.param("key", wait_key(), id="by-key"),
]


@pytest.mark.parametrize(("by", "match"), BY_NAME_OR_KEY)
def test_deliver_to_the_last_open_wait_resumes_the_run(store, by, match):
    key = waiting_run(store, due=T + 60)
    assert deliver(store, by=by, match=match, now=T + 5) == (WaitOutcome.RESUMED, 1)
    run = store.get_run(RUN)
    assert (run["state"], run["gen"]) == (RunState.QUEUED, "1")
    assert "resume_pending" not in run
    assert score(store, store.keys.queued) == T + 5 and score(store, store.keys.running) is None
    assert store.checkpoint(RUN, key) == YES
    assert open_waits(store) == {} and timer(store, key) is None
    assert loads(store.redis.hget(store.keys.answered(RUN), key)) == wait_spec(due=T + 60)
    assert len(of_type(store, events.RUN_RESUMED)) == 1 and types(store)[-1] == events.RUN_RESUMED


def test_deliver_with_another_wait_open_resumes_and_keeps_that_wait_open(store):
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store) == (WaitOutcome.PAUSED, None, 0)
    assert pause(store, step=OTHER, token="tok-2", name="confirm") == (WaitOutcome.PAUSED, None, 0)
    assert store.get_run(RUN)["state"] == RunState.WAITING
    assert deliver(store, now=T + 5) == (WaitOutcome.RESUMED, 1)
    assert store.checkpoint(RUN, wait_key()) == YES
    assert list(open_waits(store)) == [wait_key(name="confirm", step=OTHER)]
    assert fields_of(store, "state", "gen", "resume_pending") == (RunState.QUEUED, "1", None)


def test_a_branch_still_waiting_pauses_again_in_the_next_generation_saying_nothing(store):
    make_run(store, RunState.RUNNING)
    begin_other(store)
    pause(store)
    pause(store, step=OTHER, token="tok-2", name="confirm")
    deliver(store, now=T + 5)
    waiting_events = len(of_type(store, events.RUN_WAITING))
    begin(store, step=OTHER, token="tok-4", gen=1, now=T + 6)
    assert pause(store, step=OTHER, token="tok-4", gen=1, name="confirm", now=T + 7) == (
        WaitOutcome.PAUSED, None, 0)
    assert len(of_type(store, events.RUN_WAITING)) == waiting_events
    assert fields_of(store, "state", "gen") == (RunState.WAITING, "1")
    assert list(open_waits(store)) == [wait_key(name="confirm", step=OTHER)]


def test_deliver_while_a_step_is_in_flight_resumes_when_it_pauses_as_well(store):
    """The other branch paused instead of completing: its begin_wait opened the generation
    but said nothing of it, so nothing enqueued the run's frontier; it sat queued with no
    message until the reaper took it for stranded (never, without beat)."""
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store) == (WaitOutcome.PAUSED, None, 0)
    assert deliver(store, now=T + 5) == (WaitOutcome.DELIVERED, 0)
    assert pause(store, step=OTHER, token="tok-2", name="confirm", now=T + 6) == (
        WaitOutcome.PAUSED, None, 1)
    assert fields_of(store, "state", "gen", "resume_pending") == (RunState.QUEUED, "1", None)
    assert list(open_waits(store)) == [wait_key(name="confirm", step=OTHER)]


def test_a_lapsed_lease_released_as_the_run_s_last_in_flight_resumes_its_answered_waits(
        store):
    """The lease-lapsed path that finds the run in another state than the reaper saw
    released the step and settled the run, which opened a generation for its answered wait,
    and said nothing of it: nothing enqueued the run's frontier."""
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store) == (WaitOutcome.PAUSED, None, 0)
    assert deliver(store, now=T + 5) == (WaitOutcome.DELIVERED, 0)
    gen, why = store.restart(RUN, expected_state=RunState.WAITING, reason="why",
                             now=T + lapse(store) + 10, cause=RestartCause.LEASE_LAPSED,
                             step=OTHER)
    assert (gen, why) == (1, None)
    assert fields_of(store, "state", "gen", "resume_pending") == (RunState.QUEUED, "1", None)
    assert leases_of(store) == []


def test_deliver_while_a_step_is_in_flight_resumes_when_it_completes(store):
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store) == (WaitOutcome.PAUSED, None, 0)
    assert deliver(store, now=T + 5) == (WaitOutcome.DELIVERED, 0)
    assert fields_of(store, "state", "gen", "resume_pending") == (RunState.RUNNING, "0", "1")
    assert store.checkpoint(RUN, wait_key()) == YES
    assert complete(store, step=OTHER, token="tok-2", now=T + 6) == ('"out"', 1, False)
    assert fields_of(store, "state", "gen", "resume_pending") == (RunState.QUEUED, "1", None)
    assert score(store, store.keys.queued) == T + 6 and score(store, store.keys.running) is None


@pytest.mark.parametrize(("by", "match"), BY_NAME_OR_KEY)
def test_deliver_the_same_answer_again_is_same(store, by, match):
    waiting_run(store)
    assert deliver(store, by=by, match=match, now=T + 5) == (WaitOutcome.RESUMED, 1)
    assert deliver(store, by=by, match=match, now=T + 6) == (WaitOutcome.SAME, 0)
    assert fields_of(store, "state", "gen") == (RunState.QUEUED, "1")
    assert len(of_type(store, events.RUN_RESUMED)) == 1


@pytest.mark.parametrize(("by", "match"), BY_NAME_OR_KEY)
def test_deliver_the_same_answer_after_the_resumed_run_ended_is_still_same(store, by, match):
    """A resend whose first response was lost, after the resumed run already finished."""
    waiting_run(store)
    assert deliver(store, by=by, match=match, now=T + 5) == (WaitOutcome.RESUMED, 1)
    begin(store, token="tok-5", gen=1, now=T + 6)
    assert finish(store, gen=1, now=T + 7)
    assert deliver(store, by=by, match=match, now=T + 8) == (WaitOutcome.SAME, 0)
    assert deliver(store, by=by, match=match, answer='{"input":"no"}', now=T + 9) == (
        WaitOutcome.ANSWERED, 0)
    assert len(of_type(store, events.RUN_RESUMED)) == 1


@pytest.mark.parametrize(("by", "match"), BY_NAME_OR_KEY)
def test_deliver_another_answer_after_the_first_is_answered_and_changes_nothing(store, by, match):
    """The sender learns the first answer stands (it was told the run "waits for no
    input", as if it had never asked)."""
    waiting_run(store)
    assert deliver(store, by=by, match=match, now=T + 5) == (WaitOutcome.RESUMED, 1)
    run_before, events_before = store.get_run(RUN), types(store, RUN)
    assert deliver(store, by=by, match=match, answer='{"input":"no"}', now=T + 7) == (
        WaitOutcome.ANSWERED, 0)
    assert store.get_run(RUN) == run_before and types(store, RUN) == events_before
    assert store.checkpoint(RUN, wait_key()) == YES


def _unknown_name(store):
    waiting_run(store)
    return RUN, {"match": "other"}


def _ended_while_waiting(store):
    waiting_run(store, due=T + 60)
    assert cancel(store, now=T + 2) == 1
    return RUN, {}


def _not_paused(store):
    make_run(store, RunState.RUNNING)
    return RUN, {}


def _unknown_run(store):
    return "unknown", {}


def test_deliver_by_key_to_a_wait_not_yet_begun_answers_it_early(store):
    """An event sent while its step is between indexing the wait and beginning it: the
    answer is checkpointed, and begin_wait then finds it (READY) instead of pausing."""
    waiting_run(store)
    early = wait_key(name="other")
    assert deliver(store, RUN, now=T + 7, by="key", match=early) == (WaitOutcome.DELIVERED, 0)
    assert store.checkpoint(RUN, early) is not None
    assert deliver(store, RUN, now=T + 8, by="key", match=early) == (WaitOutcome.NOT_WAITING, 0)


@pytest.mark.parametrize("setup", [
    pytest.param(_unknown_name, id="unknown-name"),
    pytest.param(_ended_while_waiting, id="ended-run"),
    pytest.param(_not_paused, id="no-wait-open"),
    pytest.param(_unknown_run, id="unknown-run"),
])
def test_deliver_when_nothing_waits_for_it_is_not_waiting(store, setup):
    run_id, kwargs = setup(store)
    run_before, waits_before = store.get_run(run_id), open_waits(store, run_id)
    answer_before = store.checkpoint(run_id, wait_key())
    events_before = types(store, run_id)
    assert deliver(store, run_id, now=T + 7, **kwargs) == (WaitOutcome.NOT_WAITING, 0)
    assert store.get_run(run_id) == run_before and open_waits(store, run_id) == waits_before
    assert store.checkpoint(run_id, wait_key()) == answer_before
    assert types(store, run_id) == events_before


# -- timers --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name", "answer", "by"), [
    pytest.param(WaitKind.INPUT, INPUT, '{"timeout":true}', "timeout", id="input-timeout"),
    pytest.param(WaitKind.EVENT, "order:1", '{"timeout":true}', "timeout", id="event-timeout"),
    pytest.param(WaitKind.SLEEP, "sleep", '{"slept":true}', "timer", id="sleep-ends"),
])
def test_fire_timer_of_a_due_wait_answers_it_and_resumes(store, kind, name, answer, by):
    key = waiting_run(store, kind=kind, name=name, due=T + 60)
    assert store.due_timers(T + 59) == []
    assert store.due_timers(T + 60) == [(RUN, key)]
    assert store.fire_timer(RUN, key, T + 60) == (WaitOutcome.RESUMED, 1)
    assert store.checkpoint(RUN, key) == answer
    assert fields_of(store, "state", "gen") == (RunState.QUEUED, "1")
    assert score(store, store.keys.queued) == T + 60
    assert open_waits(store) == {} and timers_of(store) == []
    (resumed,) = of_type(store, events.RUN_RESUMED)
    assert (resumed["by"], resumed["name"], resumed["step"]) == (by, name, STEP)


def test_fire_timer_with_another_wait_open_resumes(store):
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store, due=T + 60) == (WaitOutcome.PAUSED, None, 0)
    assert pause(store, step=OTHER, token="tok-2", name="confirm") == (WaitOutcome.PAUSED, None, 0)
    assert store.fire_timer(RUN, wait_key(), T + 60) == (WaitOutcome.RESUMED, 1)
    assert store.checkpoint(RUN, wait_key()) == '{"timeout":true}'
    assert fields_of(store, "state", "gen") == (RunState.QUEUED, "1")
    assert list(open_waits(store)) == [wait_key(name="confirm", step=OTHER)]


def test_fire_timer_while_a_step_is_in_flight_resumes_when_it_lets_go(store):
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store, due=T + 60) == (WaitOutcome.PAUSED, None, 0)
    assert store.fire_timer(RUN, wait_key(), T + 60) == (WaitOutcome.DELIVERED, 0)
    assert fields_of(store, "state", "gen", "resume_pending") == (RunState.RUNNING, "0", "1")


def test_fire_timer_twice_fires_once(store):
    key = waiting_run(store, due=T + 60)
    sweeps = [store.due_timers(T + 61), store.due_timers(T + 61)]  # two sweeps saw it due
    assert sweeps == [[(RUN, key)], [(RUN, key)]]
    assert store.fire_timer(RUN, key, T + 61) == (WaitOutcome.RESUMED, 1)
    assert store.fire_timer(RUN, key, T + 61) == (WaitOutcome.NOT_WAITING, 0)
    assert fields_of(store, "state", "gen") == (RunState.QUEUED, "1")
    assert len(of_type(store, events.RUN_RESUMED)) == 1


def test_fire_timer_of_a_cancelled_run_does_nothing(store):
    key = waiting_run(store, due=T + 60)
    assert cancel(store, now=T + 2) == 1
    assert store.due_timers(T + 100) == []
    events_before = types(store)
    assert store.fire_timer(RUN, key, T + 100) == (WaitOutcome.NOT_WAITING, 0)
    assert store.checkpoint(RUN, key) is None
    assert fields_of(store, "state", "gen") == (RunState.CANCELLED, "0")
    assert types(store) == events_before


def test_due_timers_come_earliest_due_first_across_shards(store):
    """Read shard by shard, five delayed starts of one key were admitted scrambled."""
    runs = [str(ULID()) for _ in range(40)]
    assert len({shard_of(run_id) for run_id in runs}) > 1
    due = {run_id: T + 1 + n * 0.01 for n, run_id in enumerate(runs)}  # made in this order
    for run_id, at in due.items():
        store.redis.zadd(store.keys.timers(shard_of(run_id)), {f"{run_id} $start": at})
    assert store.due_timers(T + 10) == [(run_id, "$start") for run_id in runs]


def test_fire_timer_start_of_a_scheduled_run_queues_it(store):
    scheduled_run(store, start_at=T + 60)
    assert store.due_timers(T + 59) == [] and store.due_timers(T + 60) == [(RUN, "$start")]
    assert store.fire_timer(RUN, "$start", T + 60) == (WaitOutcome.RESUMED, 0)
    assert fields_of(store, "state", "gen") == (RunState.QUEUED, "0")
    assert score(store, store.keys.queued) == T + 60 and timers_of(store) == []
    assert types(store) == [events.RUN_SCHEDULED, events.RUN_QUEUED]
    assert store.fire_timer(RUN, "$start", T + 60) == (WaitOutcome.NOT_WAITING, 0)
    assert types(store) == [events.RUN_SCHEDULED, events.RUN_QUEUED]
    assert begin(store, now=T + 61).status == StepStart.RUN  # its message is due now


def test_due_timers_lists_only_what_is_due(store):
    scheduled_run(store, "run-a", start_at=T + 10)
    waiting_run(store, "run-b", due=T + 20)
    waiting_run(store, "run-c", due=T + 30)
    waiting_run(store, "run-d")  # no deadline: no timer
    assert store.due_timers(T + 9) == []
    assert sorted(store.due_timers(T + 20)) == [("run-a", "$start"), ("run-b", wait_key())]
    assert len(store.due_timers(T + 1000)) == 3


# -- ending a waiting or scheduled run -----------------------------------------------------


def _waiting_with_deadline(store):
    waiting_run(store, due=T + 60)


@pytest.mark.parametrize(("setup", "end", "state"), [
    pytest.param(scheduled_run, cancel, RunState.CANCELLED, id="scheduled-cancel"),
    pytest.param(_waiting_with_deadline, cancel, RunState.CANCELLED, id="waiting-cancel"),
    pytest.param(_waiting_with_deadline, fail, RunState.FAILED, id="waiting-fail"),
    pytest.param(_waiting_with_deadline, finish, RunState.SUCCEEDED, id="waiting-finish"),
])
def test_ending_a_waiting_or_scheduled_run_drops_its_waits_and_timers(store, setup, end, state):
    setup(store)
    assert end(store, call_id="call-1", now=T + 5) in (1, True)
    assert store.get_run(RUN)["state"] == state
    assert open_waits(store) == {} and store.load_run(RUN)[2] == []
    assert timers_of(store) == [] and store.due_timers(T + 1000) == []
    assert score(store, store.keys.queued) is None and score(store, store.keys.running) is None


def test_restart_giving_up_drops_the_runs_waits_and_timers(store):
    make_run(store, RunState.RUNNING)
    begin_other(store)
    assert pause(store, due=T + 60) == (WaitOutcome.PAUSED, None, 0)
    assert lapsed_restart(store, OTHER, T + 2 + lapse(store),
                          max_restarts=0) == (0, RestartRefusal.GAVE_UP)
    assert store.get_run(RUN)["state"] == RunState.FAILED
    assert open_waits(store) == {} and timers_of(store) == []


# -- wakers and sent events (outside the shards) -------------------------------------------


def test_wakers_are_the_indexed_waits_each_left_until_dropped(store):
    store.add_waker("order:1", "run-1", "k1", 60)
    store.add_waker("order:1", "run-2", "k2", 60)
    store.add_waker("order:1", "run-2", "k2", 60)  # indexed twice: once
    store.add_waker("order:2", "run-3", "k3", 60)
    assert 0 < store.redis.ttl(store.keys.wakers("order:1")) <= 60
    assert sorted(store.wakers("order:1")) == [("run-1", "k1"), ("run-2", "k2")]
    store.drop_waker("order:1", "run-1", "k1")  # an event was delivered to it
    assert store.wakers("order:1") == [("run-2", "k2")]  # not to this one yet: still there
    store.drop_waker("order:1", "run-2", "k2")
    assert store.redis.exists(store.keys.wakers("order:1")) == 0
    assert store.wakers("order:2") == [("run-3", "k3")]


def test_owed_resumes_are_kept_until_settled_each_by_its_generation(store):
    store.owe_resume("run-1", 2)
    store.owe_resume("run-1", 2)  # owed twice: once
    store.owe_resume("run-2", 1)
    assert sorted(store.owed_resumes()) == [("run-1", 2), ("run-2", 1)]
    store.settle_resume("run-1", 1)  # another generation's: not this one
    store.settle_resume("run-2", 1)
    assert store.owed_resumes() == [("run-1", 2)]


def test_sent_since_returns_the_oldest_event_sent_since_and_after_the_last_taken(store):
    first = store.record_sent("order:1", '"first"', T, keep=60)
    second = store.record_sent("order:1", '"second"', T + 1, keep=60)
    third = store.record_sent("order:1", '"third"', T + 2, keep=60)
    store.record_sent("order:2", '"other"', T + 3, keep=60)
    assert store.sent_since("order:1", T - 1) == ('"first"', T, first)
    assert store.sent_since("order:1", T - 1, taken={first}) == ('"second"', T + 1, second)
    assert store.sent_since("order:1", T + 0.5) == ('"second"', T + 1, second)
    assert store.sent_since("order:1", T - 1, taken={third}) == ('"first"', T, first)
    assert store.sent_since("order:1", T - 1, taken={first, second, third}) is None
    assert store.sent_since("order:1", T - 1, after_t=T + 1) == ('"third"', T + 2, third)
    assert store.sent_since("order:3", T - 1) is None


def test_sent_since_follows_the_order_events_were_sent_in_not_the_senders_clocks(store):
    """Two sent in one millisecond, or by two hosts whose clocks differ a little: a cursor
    on the senders' times skipped one of them for good."""
    same = [store.record_sent("chat:1", f'"m{i}"', T, keep=60) for i in range(2)]
    assert store.sent_since("chat:1", T - 1, taken={same[0]}) == ('"m1"', T, same[1])
    late_clock = store.record_sent("chat:2", '"a"', T + 0.002, keep=60)
    early_clock = store.record_sent("chat:2", '"b"', T + 0.001, keep=60)  # sent after "a"
    assert store.sent_since("chat:2", T - 1) == ('"a"', T + 0.002, late_clock)
    assert store.sent_since("chat:2", T - 1, taken={late_clock}) == ('"b"', T + 0.001,
                                                                    early_clock)
    # a newer event that answered a wait first (two senders at once: the second's delivery
    # came first) leaves the older one to the run's next wait, not behind a cursor
    assert store.sent_since("chat:2", T - 1, taken={early_clock}) == ('"a"', T + 0.002,
                                                                     late_clock)


def test_sent_since_takes_nothing_at_or_before_the_floor(store):
    assert store.last_sent_id("order:9") == "0-0"
    old = [store.record_sent("order:9", f'"o{i}"', T, keep=60) for i in range(2)]
    assert store.last_sent_id("order:9") == old[1]
    new = store.record_sent("order:9", '"n"', T + 1, keep=60)
    assert store.sent_since("order:9", T - 1, floor=old[1]) == ('"n"', T + 1, new)
    assert store.sent_since("order:9", T - 1, floor=new) is None
    assert store.sent_since("order:9", T - 1, floor="0-0") == ('"o0"', T, old[0])


def test_sent_since_leaves_out_events_sent_before_since(store):
    store.record_sent("order:1", '"old"', T, keep=60)
    assert store.sent_since("order:1", T + 1) is None
    new = store.record_sent("order:1", '"new"', T + 2, keep=60)
    assert store.sent_since("order:1", T + 1) == ('"new"', T + 2, new)


# -- heartbeat ------------------------------------------------------------------------------


def test_heartbeat_renews_its_tokens_lease_and_records_the_worker(store):
    make_run(store, RunState.RUNNING)
    store.heartbeat([(RUN, STEP, TOKEN)], WORKER, T + 1)
    assert lease_lapses(store) == T + 1 + lapse(store)
    assert lease(store)["expires"] == T + 1 + lapse(store)
    assert store.redis.zscore(store.keys.workers, WORKER) == T + 1
    assert float(store.get_run(RUN)["heartbeat_at"]) == T + 1


def test_heartbeat_with_another_token_renews_nothing(store):
    make_run(store, RunState.RUNNING)
    before = lease(store)
    store.heartbeat([(RUN, STEP, "tok-2")], "w2", T + 1)
    assert lease(store) == before
    assert lease_lapses(store) == T + lapse(store)
    assert float(store.get_run(RUN)["heartbeat_at"]) == T
    assert store.redis.zscore(store.keys.workers, "w2") == T + 1  # the process itself lives


# -- release_ended --------------------------------------------------------------------------


def test_release_ended_lets_go_of_a_stopped_attempt_s_lease_once_its_run_ended(store):
    """Another branch failed the run, or a user cancelled it: the attempt that saw it and
    stopped held its lease until the lapse, and a retry said the step still ran."""
    make_run(store, RunState.RUNNING)
    assert cancel(store) == 1
    assert lease(store) is not None  # cancel.lua leaves a running step's lease to it
    assert store.release_ended(RUN, STEP, TOKEN) is True
    assert lease(store) is None and leases_of(store) == []
    assert store.live_leases(RUN, T + 1) == {}


@pytest.mark.parametrize("ends", ["fail", "release_ended"])
def test_a_sub_step_checkpoint_written_after_the_run_ended_expires_with_the_run(store, ends):
    """A cancelled run's first step called a component, then raised (or stopped): the
    component's checkpoint made the run's checkpoints hash anew, with no expiry, and the
    step's end on the ended run (fail.lua said 0 at once) gave it none: kept for ever."""
    make_run(store, RunState.RUNNING)
    assert cancel(store) == 1
    store.save_checkpoint(RUN, f"{STEP}/0:sub", '"late"')
    ckpt = store.keys.checkpoints(RUN)
    assert store.redis.ttl(ckpt) == -1  # written outside the run scripts
    if ends == "fail":
        assert fail(store) is False  # the run had ended: nothing else changes
    else:
        assert store.release_ended(RUN, STEP, TOKEN) is True
    assert 0 < store.redis.ttl(ckpt) <= store.settings.retention_seconds


@pytest.mark.parametrize(("state", "step", "token"), [
    pytest.param(RunState.RUNNING, STEP, TOKEN, id="run-live"),
    pytest.param(RunState.CANCELLED, STEP, "tok-2", id="wrong-token"),
    pytest.param(RunState.CANCELLED, "9:z", TOKEN, id="no-lease"),
])
def test_release_ended_keeps_a_live_run_s_lease_and_another_attempt_s(store, state, step, token):
    """A live run's lease stays: an attempt ending there without its checkpoint is
    recovered by the lapse (the reaper restarts the run)."""
    make_run(store, RunState.RUNNING)
    if state == RunState.CANCELLED:
        assert cancel(store) == 1
    before = lease(store)
    assert store.release_ended(RUN, step, token) is False
    assert lease(store) == before and leases_of(store) == [f"{RUN} {STEP}"]


# -- revoke_lease ---------------------------------------------------------------------------


def test_revoke_lease_by_its_holder_hands_it_over_now(store):
    make_run(store, RunState.RUNNING)
    assert store.revoke_lease(RUN, STEP, TOKEN, T + 1) is True
    assert lease(store)["token"] == HANDED_OVER and lease(store)["expires"] == T + 1
    assert lease_lapses(store) == T + 1
    store.heartbeat([(RUN, STEP, TOKEN)], WORKER, T + 1.5)  # no heartbeat renews it
    assert lease_lapses(store) == T + 1
    assert store.lapsed_leases(T + 1) == [(RUN, STEP)]


@pytest.mark.parametrize(("step", "token"), [
    pytest.param(STEP, "tok-2", id="wrong-token"),
    pytest.param("9:z", TOKEN, id="no-lease"),
])
def test_revoke_lease_without_holding_it_changes_nothing(store, step, token):
    make_run(store, RunState.RUNNING)
    before = lease(store)
    assert store.revoke_lease(RUN, step, token, T + 1) is False
    assert lease(store) == before and lease_lapses(store) == T + lapse(store)
    assert leases_of(store) == [f"{RUN} {STEP}"]


# -- rate buckets ---------------------------------------------------------------------------

#: [req_rate, req_cap, tok_rate, tok_cap, cost, ttl]: refills far slower than any test runs
REQUESTS = [0.001, 1, 0, 0, 0, 60]   # one request per 1000 s
TOKENS = [0, 0, 0.001, 10, 10, 60]   # 10 tokens per 10000 s, 10 a call


@pytest.mark.parametrize(("budget", "longest"), [
    pytest.param(REQUESTS, 1000, id="requests"),
    pytest.param(TOKENS, 10000, id="tokens"),
])
def test_take_rate_empties_the_bucket_then_says_how_long_to_wait(store, budget, longest):
    assert store.take_rate("p:m", budget) == 0
    wait = store.take_rate("p:m", budget)
    assert 0 < wait <= longest
    assert longest * 0.9 < wait  # in seconds, not milliseconds


def test_settle_rate_gives_tokens_back(store):
    assert store.take_rate("p:m", TOKENS) == 0
    assert store.take_rate("p:m", TOKENS) > 0
    store.settle_rate("p:m", 10)
    assert store.take_rate("p:m", TOKENS) == 0


def test_settle_rate_with_a_negative_delta_takes_more(store):
    half = [0, 0, 0.001, 10, 5, 60]
    assert store.take_rate("p:m", half) == 0  # 5 left
    store.settle_rate("p:m", -5)
    assert store.take_rate("p:m", half) > 0


@pytest.mark.parametrize(("budget", "refill"), [
    pytest.param(REQUESTS, 1000, id="requests"),
    pytest.param(TOKENS, 10000, id="tokens"),
    pytest.param([0, 0, 100000 / 86400, 100000, 2000, 60], 1728, id="a-day-s-tokens"),
])
def test_take_rate_keeps_a_bucket_until_it_is_full_again(store, budget, refill):
    """A bucket Redis forgets is full: kept 60 s, a budget of 100,000 tokens a day gave a
    step of 2,000 its tokens again each minute (the next step waited 28 min, a third went
    after 61 s)."""
    assert store.take_rate("p:m", budget) == 0
    assert refill <= store.redis.ttl(store.keys.rate("p:m")) <= refill + 2


def test_settle_rate_that_takes_more_keeps_the_bucket_until_it_is_full_again(store):
    assert store.take_rate("p:m", [0, 0, 1, 100, 10, 60]) == 0  # 90 left, full in 10 s
    assert store.redis.ttl(store.keys.rate("p:m")) == 60
    store.settle_rate("p:m", -5000)  # the call took 5,010: full again in 5,010 s
    assert 5010 <= store.redis.ttl(store.keys.rate("p:m")) <= 5012
    store.settle_rate("p:m", 4000)  # given back: kept as long all the same
    assert store.redis.ttl(store.keys.rate("p:m")) > 5000


def test_settle_rate_on_a_forgotten_bucket_does_nothing(store):
    store.settle_rate("p:m", 10)
    assert store.redis.exists(store.keys.rate("p:m")) == 0


def test_forget_timeouts_drops_the_timed_out_answers_of_every_step_not_completed(store):
    """What a retry of a run a wait's timeout failed drops: every unfinished step's (a
    sibling branch's or item's too: each retry failed again on the next one), not a
    completed step's or sub-step's, which caught its timeout and made its output from it."""
    from flowkit.store.store import TIMED_OUT  # noqa: PLC0415

    step, sibling, done = "1.0:t.odd*[name]?", "1.1:t.ask/or/tell", "0:t.caught"
    forgotten = {f"{step}/0:wait:input:a": TIMED_OUT, f"{sibling}/0:wait:event:k": TIMED_OUT,
                 f"{step}/3:t.sub/0:wait:input:c": TIMED_OUT}
    kept = {f"{step}/1:wait:input:b": '{"input":1}',
            f"{step}/2:t.sub": TIMED_OUT,  # a sub-step whose output looks the same
            done: '"went on"', f"{done}/0:wait:input:a": TIMED_OUT,
            f"{step}/4:t.done_sub": '"ok"', f"{step}/4:t.done_sub/0:wait:input:d": TIMED_OUT}
    for key, value in {**forgotten, **kept}.items():
        store.save_checkpoint(RUN, key, value)
    assert store.forget_timeouts(RUN) == 3
    assert store.checkpoints(RUN) == kept
    assert store.forget_timeouts(RUN) == 0


@pytest.mark.parametrize(("by", "match"), BY_NAME_OR_KEY)
def test_deliver_after_the_wait_timed_out_is_timed_out_and_changes_nothing(store, by, match):
    """The timeout is the wait's answer (TIMED_OUT in its checkpoint): a late sender was
    told another value had answered first."""
    from flowkit.store.store import TIMED_OUT

    waiting_run(store)
    assert deliver(store, by=by, match=match, answer=TIMED_OUT, now=T + 5) == (
        WaitOutcome.RESUMED, 1)
    run_before, events_before = store.get_run(RUN), types(store, RUN)
    assert deliver(store, by=by, match=match, now=T + 7) == (WaitOutcome.TIMED_OUT, 0)
    assert store.get_run(RUN) == run_before and types(store, RUN) == events_before
    assert store.checkpoint(RUN, wait_key()) == TIMED_OUT


def test_a_wait_whose_timeout_a_retry_forgot_is_not_said_to_be_answered(store):
    """An input sent after the retry, before the step opened the wait again, was refused
    as "answered already, with another value": no answer existed."""
    from flowkit.store.store import TIMED_OUT

    waiting_run(store)
    assert deliver(store, answer=TIMED_OUT, now=T + 5) == (WaitOutcome.RESUMED, 1)
    assert store.forget_timeouts(RUN) == 1
    assert deliver(store, now=T + 7) == (WaitOutcome.NOT_WAITING, 0)  # not yet open again
    assert store.redis.hlen(store.keys.answered(RUN)) == 0


def test_a_wait_whose_timeout_a_retry_forgot_stays_its_step_s_pause_point(store):
    """The retried step replays its text up to that wait, which the stream holds from the
    attempt that paused there: forgotten with the timeout, it was sent again."""
    from flowkit.store.store import TIMED_OUT

    key = waiting_run(store)
    assert deliver(store, answer=TIMED_OUT, now=T + 5) == (WaitOutcome.RESUMED, 1)
    assert store.forget_timeouts(RUN) == 1
    assert store.pause_point(RUN, STEP, 3) == key  # the retry's attempt: 1 paused there
    assert store.pause_point(RUN, STEP, 1) is None
    assert store.pause_point(RUN, "1:other", 3) is None


def test_waits_answered_reads_only_the_answers_of_one_wait_name_even_with_glob_characters(store):
    ckpt = store.keys.checkpoints("run-w")
    store.redis.hset(ckpt, mapping={
        "0:a": '"output"', "0:a/0:wait:event:tick:*[1]": '{"event":1}',
        "1:b/2:wait:event:tick:*[1]": '{"event":2}', "1:b/3:wait:event:tick:x1": '{"event":3}',
        "1:b/4:wait:input:tick:*[1]": '{"input":4}'})
    assert store.waits_answered("run-w", "event", "tick:*[1]") == {
        "0:a/0:wait:event:tick:*[1]": '{"event":1}', "1:b/2:wait:event:tick:*[1]": '{"event":2}'}


# -- listing -----------------------------------------------------------------------------


def test_paging_through_runs_made_at_the_same_instant_lists_each_once(store):
    """The page after a run went on from strictly before its creation time: the runs made
    at that same instant and not yet listed were skipped (a bulk `flowkit retry --failed`
    past one page left them out)."""
    ids = [make_run(store, run_id=f"run-{i}") for i in range(5)]  # all created at T
    listed, before = [], None
    while page := store.list_runs(None, None, 2, before):
        listed += [record["id"] for record in page]
        before = page[-1]["id"]
    assert listed == sorted(ids, reverse=True)  # newest first; one instant: by id


def test_a_page_after_an_expired_cursor_lists_the_runs_made_in_its_millisecond_before_it(store):
    """A cursor whose run expired is known only by its id's millisecond; the listings were
    scored by each run's exact time, and the page went on from strictly before that
    millisecond: a run made in it before the cursor (a burst of starts) was never listed."""
    ms = ULID.from_timestamp(T + 0.5)
    older, cursor = sorted(str(ULID.from_timestamp(ms.timestamp)) for _ in range(2))
    for run_id, at in ((older, ms.timestamp + 0.0002), (cursor, ms.timestamp + 0.0004)):
        assert store.create_run({**record(run_id), "created_at": at}, queued_event(run_id),
                                None) == (run_id, True)
    assert [r["id"] for r in store.list_runs(None, None, 5, cursor)] == [older]  # live cursor
    store.redis.zrem(store.keys.runs, cursor)  # it expired: retention trimmed it
    assert [r["id"] for r in store.list_runs(None, None, 5, cursor,
                                             before_time=ms.timestamp)] == [older]


def test_a_lower_case_cursor_pages_as_its_run_id_does(store):
    """A run id is case-insensitive everywhere else; as ``before`` in lower case it was not
    found in the index, and the page went on from strictly before its time, skipping the
    runs made at that instant."""
    ids = sorted((make_run(store, run_id=str(ULID())) for _ in range(3)), reverse=True)
    for cursor in (ids[0], ids[0].lower()):  # all three made at T
        assert [r.id for r in list_runs(before=cursor, store=store)] == ids[1:]


def test_the_retention_trim_keeps_old_runs_that_still_exist_in_the_listings(store):
    """Every run created before the cutoff left the listings, live or not: a run waiting
    for a person past the retention vanished from GET /runs and the dashboard."""
    live = make_run(store, RunState.RUNNING, run_id="run-live")  # made at T, still going
    ended = make_run(store, RunState.SUCCEEDED, run_id="run-ended")  # within its retention
    gone = make_run(store, run_id="run-expired")
    store.redis.delete(store.keys.run(gone))  # its keys expired
    store.TRIM_BATCH = 2  # the live ones ahead of a batch do not stop the trim

    assert store.trim_indexes(cutoff=T + 3600) == 2  # from the index of all and its workflow's
    assert [r["id"] for r in store.list_runs(None, None, 10, None)] == [live, ended]
    assert [r["id"] for r in store.list_runs("wf", None, 10, None)] == [live, ended]
    assert store.redis.zscore(store.keys.runs, gone) is None


def test_the_event_waits_of_runs_still_waiting_are_indexed_again_past_the_retention(store):
    """The set of a run's event wait expired a retention after the wait began: a run
    waiting longer was never woken by its event (send_event found nobody)."""
    make_run(store, RunState.RUNNING)
    assert pause(store, kind=WaitKind.EVENT, name="payment:42")[0] == WaitOutcome.PAUSED
    make_run(store, RunState.RUNNING, run_id="run-input")
    assert pause(store, "run-input")[0] == WaitOutcome.PAUSED  # an input: no event set
    wakers = store.keys.wakers("payment:42")
    assert not store.redis.exists(wakers)  # as it is once its retention passed

    assert store.keep_wakers(3600) == 1
    assert store.wakers("payment:42") == [(RUN, wait_key(WaitKind.EVENT, "payment:42"))]
    assert store.keep_wakers(3600) == 1  # still waiting: indexed again, however often
    assert 3590 < store.redis.ttl(wakers) <= 3600
    assert deliver(store, by="key", match=wait_key(WaitKind.EVENT, "payment:42"))[0] == \
        WaitOutcome.RESUMED
    store.redis.delete(wakers)
    assert store.keep_wakers(3600) == 0  # woken: not indexed again


def test_an_idempotency_claim_is_kept_as_long_as_its_run(store):
    """A claim expired a retention after its run was made: the same key then started a
    second run while the first still waited."""
    def made(run_id: str, key: str) -> str:
        doc = {**record(run_id), "idempotency_key": key}
        assert store.create_run(doc, queued_event(run_id), key) == (run_id, True)
        return store.keys.idempotency("wf", key)

    live, lapsed = made("run-live", "k-live"), made("run-lapsed", "k-lapsed")
    ended, taken = made("run-ended", "k-ended"), made("run-taken", "k-taken")
    assert begin(store, "run-ended").status == StepStart.RUN
    complete(store, "run-ended")
    assert finish(store, "run-ended")
    store.redis.expire(live, 5)  # about to lapse
    store.redis.delete(lapsed)  # lapsed before a pass could keep it
    store.redis.set(taken, "another-run")  # another run holds the key since

    assert store.keep_claims(T + 50, keep=100, ahead=40) == 0  # none lapses within 40 s
    assert store.keep_claims(T + 200, keep=100, ahead=40) == 3
    assert 90 < store.redis.ttl(live) <= 100  # live: kept a while more
    assert store.redis.get(lapsed) == "run-lapsed"
    # never past its run (in seconds, Redis rounded up to half a second past it, and the key
    # then made a new run under the expired one's id)
    assert 0 < store.redis.pttl(store.keys.run("run-ended")) - store.redis.pttl(ended) <= 1100
    assert store.redis.get(taken) == "another-run"
    doc = {**record("run-again"), "idempotency_key": "k-lapsed"}
    assert store.create_run(doc, queued_event("run-again"), "k-lapsed") == ("run-lapsed", False)


def test_the_event_wait_of_a_branch_is_indexed_again_while_another_branch_runs(store):
    """The run is running, not waiting (another branch holds a step): only waiting runs'
    waits were indexed again, and its event wait's index lapsed after a retention."""
    make_run(store, RunState.RUNNING)
    begin_other(store)  # another branch runs on
    assert pause(store, kind=WaitKind.EVENT, name="payment:43")[0] == WaitOutcome.PAUSED
    assert store.get_run(RUN)["state"] == RunState.RUNNING
    store.redis.delete(store.keys.wakers("payment:43"))  # as a retention later
    assert store.keep_wakers(3600) == 1
    assert store.wakers("payment:43") == [(RUN, wait_key(WaitKind.EVENT, "payment:43"))]


def test_a_hand_off_records_each_queue_its_messages_went_to_once(store):
    make_run(store, RunState.RUNNING)
    store.handed_off_many([(RUN, 0, T + 1, {"llm"}), (RUN, 0, T + 2, {"llm", "flowkit"})])
    store.handed_off(RUN, 0, T + 3, ["llm"])
    store.handed_off(RUN, 0, T + 4)  # a queue unknown
    assert sorted(fields_of(store, "handoff_queues")[0].split()) == ["flowkit", "llm"]
    assert fields_of(store, "handoff_at") == (str(T + 4),)
    store.handed_off(RUN, 1, T + 5, ["other"])  # another generation's: nothing
    assert "other" not in fields_of(store, "handoff_queues")[0]


def test_a_hand_off_written_late_does_not_move_the_hand_off_back(store):
    """A batch Redis refused is written with the next one: an older time than the one
    recorded meanwhile (which would put the hand-off behind a newer checkpoint)."""
    make_run(store, RunState.RUNNING)
    store.handed_off(RUN, 0, T + 5)
    store.handed_off(RUN, 0, T + 3, ["late"])
    assert fields_of(store, "handoff_at") == (str(T + 5),)
    assert "late" in fields_of(store, "handoff_queues")[0].split()
