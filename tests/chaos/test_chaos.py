"""Chaos: 50 concurrent runs of a 10-step workflow while workers are SIGKILLed and restarted.

Every run must succeed, no checkpointed step may run again, and every run's stream,
read by a client that reconnects with its last id after every few events, must be
gapless, ordered and end with exactly one terminal event.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from flowkit import events
from flowkit.store import get_store
from tests.chaos.conftest import reruns, side_effects
from tests.chaos.workflows import ten

RUNS = 50
STEPS = 10
CHUNKS = 4
CHAOS_SECONDS = 60.0
#: restarts are expected here; a stalled or queued run is re-driven quickly
SETTINGS = {
    "FLOWKIT_MAX_RESTARTS": "1000",
    "FLOWKIT_STALL_TIMEOUT": "15",
    "FLOWKIT_QUEUED_TIMEOUT": "30",
}


def resuming_reader(run_id: str, seed: int, out: dict) -> None:
    """Read the run's stream a few events at a time, reconnecting with the last id each time."""
    rng = random.Random(seed)
    got: list[events.Event] = []
    cursor = events.START
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        batch = events.parse(get_store().read_new(run_id, cursor, 1000, count=rng.randint(1, 6)))
        got.extend(batch)
        if batch:
            cursor = batch[-1].id
        if any(e.terminal for e in batch):
            break
    out[run_id] = got


@pytest.mark.long  # a fixed time of kills, mostly waiting: beside the rest (scripts/test)
def test_every_run_succeeds_while_workers_are_killed_for_a_minute(chaos_app, deployment):
    workers = [deployment.worker(f"w{i}", **SETTINGS) for i in range(3)]
    deployment.beat(**SETTINGS)
    runs = [ten.start({"n": 0, "chunks": CHUNKS, "pause": 0.25}) for _ in range(RUNS)]
    read: dict[str, list[events.Event]] = {}
    readers = [
        threading.Thread(target=resuming_reader, args=(run.id, i, read), daemon=True)
        for i, run in enumerate(runs)
    ]
    for reader in readers:
        reader.start()

    rng = random.Random(7)
    kills = 0
    chaos_ends = time.monotonic() + CHAOS_SECONDS
    store = get_store()
    while time.monotonic() < chaos_ends and store.active_runs():
        time.sleep(rng.uniform(1.5, 4.0))  # the pace of the chaos, not a synchronisation
        slot = rng.randrange(len(workers))
        workers[slot].kill()
        kills += 1
        workers[slot] = deployment.worker(workers[slot].name, **SETTINGS)  # a fresh process

    finished = [run.wait(180) for run in runs]
    for reader in readers:
        reader.join(30)

    print(f"chaos: {kills} kills, {sum(r.restarts for r in finished)} restarts, "
          f"{time.monotonic() - chaos_ends + CHAOS_SECONDS:.0f}s")
    assert kills >= 8
    assert [r.state for r in finished] == ["succeeded"] * RUNS, [
        (r.id, r.state, r.error) for r in finished if r.state != "succeeded"
    ]
    assert all(r.output["n"] == STEPS for r in finished)
    assert sum(r.restarts for r in finished) > 0, "no run was ever hit: the test proved nothing"
    for run in runs:
        history = run.events()
        assert_stream_whole(run.id, history, read.get(run.id, []))
        assert reruns(run) == 0, f"run {run.id} ran a checkpointed step again"
        attempts = Counter(e.data["step"] for e in history if e.type == "step.started")
        started = side_effects(run, "started")
        assert set(started) == {f"{i}:chaos.work" for i in range(STEPS)}
        for step, bodies in started.items():
            assert bodies <= attempts[step], f"{run.id} {step}: {bodies} bodies for {attempts[step]} attempts"
        assert_chunks_of_the_surviving_attempts(run.id, history)


def assert_stream_whole(run_id: str, history: list[events.Event], read: list[events.Event]) -> None:
    ids = [e.id for e in history]
    as_tuples = [tuple(int(x) for x in i.split("-")) for i in ids]
    assert as_tuples == sorted(set(as_tuples)), f"{run_id}: stream out of order or duplicated"
    assert [e.id for e in read] == ids, f"{run_id}: the resuming reader missed or repeated events"
    assert [e.terminal for e in history].count(True) == 1 and history[-1].type == "run.succeeded"


def assert_chunks_of_the_surviving_attempts(run_id: str, history: list[events.Event]) -> None:
    dropped = events.superseded_attempts(history)
    chunks: dict[str, list[str]] = {}
    for e in history:
        if e.type == "step.output" and (e.data["step"], e.data["attempt"]) not in dropped:
            chunks.setdefault(e.data["step"], []).append(e.data["chunk"])
    expected = {f"{i}:chaos.work": [f"{i}:chaos.work#{c}" for c in range(CHUNKS)] for i in range(STEPS)}
    assert chunks == expected, f"{run_id}: chunks of superseded attempts were not marked"
