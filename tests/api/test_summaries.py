"""``/runs/summary``: the dashboard's per-row figures, read incrementally while a run goes on."""

from __future__ import annotations

import flowkit
from flowkit import history
from flowkit.api.views import summaries
from tests.api.helpers import start
from tests.conftest import open_gate, reached_gate


def summarise(client, run_id: str) -> dict:
    response = client.get("/runs/summary", params={"ids": run_id})
    assert response.status_code == 200, response.text
    return response.json()["runs"][run_id]


def event_reads(store, run_id: str, action) -> list[str]:
    """The first argument after the key of every XRANGE of the run's events that ``action``
    sent to Redis (MONITOR sees every client's commands)."""
    marker = f"summary-done-{run_id}"
    with store.redis.monitor() as monitor:
        action()
        store.redis.echo(marker)
        starts = []
        for seen in monitor.listen():
            command = seen["command"]
            if command.startswith("ECHO") and marker in command:
                return starts
            words = command.split()
            if words[0] == "XRANGE" and words[1].endswith(f"{run_id}:events"):
                starts.append(words[2])
    return starts


def test_a_running_runs_summary_reads_only_the_events_after_those_it_folded(client, store):
    run = start(client, "streaming", {"before": 30, "after": 3})
    handle = flowkit.get_run(run["id"])
    reached_gate(handle, "streamer")  # 30 chunks out, nothing more until the gate opens
    first = summarise(client, run["id"])
    assert first == {"steps": 1, "completed": 0, "tokens": {}, "cost": None}

    folded = history(run["id"])[-1].id
    again = []
    assert event_reads(store, run["id"], lambda: again.append(summarise(client, run["id"]))) \
        == [f"({folded}"]  # from the last event it folded, not from the start
    assert again == [first]

    open_gate(handle, "streamer")
    assert handle.wait(30).state == "succeeded"
    final = summarise(client, run["id"])
    assert final == {"steps": 1, "completed": 1, "tokens": {}, "cost": None}
    fresh = summaries.Folds().of(run["id"], store)  # the whole history, folded at once
    assert (fresh.steps, fresh.tokens) == ({"0:t.streamer": "completed"}, {})


def test_folds_are_bounded_to_the_runs_summarised_last(client, store):
    folds = summaries.Folds(most=2)
    runs = [start(client, "simple", {"n": i}) for i in range(3)]
    for run in runs:
        assert flowkit.get_run(run["id"]).wait(30).state == "succeeded"
        assert folds.of(run["id"], store).steps  # folded, and kept
    assert folds.kept() == [runs[1]["id"], runs[2]["id"]]  # the oldest went first


def test_a_kept_cursor_past_the_run_s_end_is_folded_again_from_the_start(client, store):
    """A failover that loses a stream's tail leaves a kept fold's cursor past the run's
    last event: history() refuses such a cursor, and the summary was a 400 for good."""
    run = start(client, "simple", {"n": 1})
    assert flowkit.get_run(run["id"]).wait(30).state == "succeeded"
    folds = summaries.Folds()
    folds._folds[run["id"]] = summaries.Fold("99999999999999-0", {"0:gone": "completed"}, {})
    fold = folds.of(run["id"], store)
    assert fold.cursor == history(run["id"])[-1].id
    assert set(fold.steps.values()) == {"completed"} and "0:gone" not in fold.steps
    assert folds.of(run["id"], store).cursor == fold.cursor  # kept, in place of the old one


def test_an_id_named_twice_is_summarised_once(client, store):
    run = start(client, "simple", {"n": 1}, params={"wait": 10})
    response = client.get("/runs/summary", params={"ids": f"{run['id']}, {run['id']},{run['id']}"})
    assert response.status_code == 200
    assert list(response.json()["runs"]) == [run["id"]]
