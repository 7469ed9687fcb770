"""Store scripts called twice, as redis-py resends a command whose reply was lost:
the second call must change nothing (real Redis, no worker)."""

from __future__ import annotations

import time

import pytest

from flowkit import events

pytestmark = pytest.mark.integration


@pytest.fixture
def run_id(store) -> str:
    record = {"id": "run-1", "workflow": "w", "version": "1", "state": "queued", "input": "{}",
              "created_at": time.time(), "updated_at": time.time(), "gen": 0, "restarts": 0}
    return store.create_run(record, events.make(events.RUN_QUEUED, "run-1"), None)[0]


def step_events(store, run_id: str) -> list[tuple[str, int]]:
    return [(e.type, e.data["attempt"]) for e in events.parse(store.history(run_id, events.START))
            if e.type.startswith("step.")]


def test_begin_step_resent_with_the_same_token_is_the_same_attempt(store, run_id):
    first = store.begin_step(run_id, "0:c", 0, "token-a", "w1", time.time(), "c")
    again = store.begin_step(run_id, "0:c", 0, "token-a", "w1", time.time(), "c")
    assert (first.status, first.attempt) == (again.status, again.attempt) == ("run", 1)
    assert step_events(store, run_id) == [("step.started", 1)]
    other = store.begin_step(run_id, "0:c", 0, "token-b", "w2", time.time(), "c")
    assert other.status == "leased"  # a duplicate message still finds the lease taken


def test_retrying_resent_records_the_failed_attempt_once(store, run_id):
    store.begin_step(run_id, "0:c", 0, "token-a", "w1", time.time(), "c")
    event = events.make(events.STEP_RETRYING, run_id, step="0:c", attempt=1, error="boom",
                        delay=0.1, next_attempt=2)
    assert store.retrying(run_id, "0:c", 0, "token-a", event, time.time()) == 2
    assert store.retrying(run_id, "0:c", 0, "token-a", event, time.time()) == 2
    assert step_events(store, run_id) == [("step.started", 1), ("step.retrying", 1)]


def test_fail_resent_says_it_failed_the_run_and_adds_no_event(store, run_id):
    store.begin_step(run_id, "0:c", 0, "token-a", "w1", time.time(), "c")
    error = {"type": "RuntimeError", "message": "boom", "step": "0:c", "attempts": []}
    failed = events.make(events.RUN_FAILED, run_id, step="0:c", error=error)
    args = (run_id, 0, "0:c", "token-a", time.time(), error, None, failed)
    assert store.fail(*args, call_id="call-1") is True
    assert store.fail(*args, call_id="call-1") is True  # so its caller still notifies
    assert store.fail(*args, call_id="call-2") is False  # another call finds it ended
    assert [e.type for e in events.parse(store.history(run_id, events.START))].count("run.failed") == 1


def test_cancel_resent_says_it_cancelled_the_run(store, run_id):
    cancelled = events.make(events.RUN_CANCELLED, run_id)
    assert store.cancel(run_id, time.time(), cancelled, call_id="call-1") == 1
    assert store.cancel(run_id, time.time(), cancelled, call_id="call-1") == 1
    assert store.cancel(run_id, time.time(), cancelled, call_id="call-2") == 0
    assert [e.type for e in events.parse(store.history(run_id, events.START))].count("run.cancelled") == 1


def test_finish_resent_says_it_finished_the_run(store, run_id):
    store.begin_step(run_id, "0:c", 0, "token-a", "w1", time.time(), "c")
    done = events.make(events.RUN_SUCCEEDED, run_id, output=1)
    assert store.finish(run_id, 0, time.time(), "1", done, call_id="call-1") is True
    assert store.finish(run_id, 0, time.time(), "1", done, call_id="call-1") is True
    assert store.finish(run_id, 0, time.time(), "1", done, call_id="call-2") is False
    assert [e.type for e in events.parse(store.history(run_id, events.START))].count("run.succeeded") == 1


def test_emit_resent_appends_its_event_once(store, run_id):
    store.begin_step(run_id, "0:c", 0, "token-a", "w1", time.time(), "c")
    chunk = events.make(events.STEP_OUTPUT, run_id, step="0:c", attempt=1, chunk="hello")
    first = store.emit(run_id, 0, chunk, emit_id="emit-1")
    assert store.emit(run_id, 0, chunk, emit_id="emit-1") == first
    second = store.emit(run_id, 0, chunk, emit_id="emit-2")  # the same text, sent again on purpose
    outputs = [e.id for e in events.parse(store.history(run_id, events.START)) if e.type == "step.output"]
    assert outputs == [first, second]


def test_a_run_that_ends_says_so_on_its_done_channel(store, run_id):
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.keys.done(run_id))
    try:
        assert pubsub.get_message(timeout=1) is None  # the subscription itself
        store.cancel(run_id, time.time(), events.make(events.RUN_CANCELLED, run_id))
        message = pubsub.get_message(timeout=5)
        assert message is not None and message["data"] == "cancelled"
    finally:
        pubsub.close()
