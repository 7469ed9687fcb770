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
    return store.create_run(record, events.make(events.RUN_QUEUED, "run-1"), None)


def step_events(store, run_id: str) -> list[tuple[str, int]]:
    return [(e.type, e.data["attempt"]) for e in events.history(run_id, store=store)
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
