"""A worker SIGKILLed in the middle of a batched fan-out: only the items in flight run again."""

from __future__ import annotations

from flowkit.engine.paths import item_key
from tests.chaos.conftest import open_gate, reruns, side_effects, wait_for, waiting
from tests.chaos.test_sigkill import detection_bound
from tests.chaos.workflows import batch_held


def key(i: int) -> str:
    return item_key("1", i, "chaos.item")


def test_sigkilled_worker_mid_batch_reruns_only_the_items_in_flight(chaos_app, deployment):
    a = deployment.worker("a")
    deployment.beat()
    run = batch_held.start({"n": 4})  # one batch: items 0 and 1 return, 2 and 3 hold
    first = [waiting(run), waiting(run)]
    assert all(w["attempt"] == 1 and w["worker"].startswith("a@") for w in first)
    wait_for(lambda: {e.data["step"] for e in run.events() if e.type == "step.completed"}
             >= {key(0), key(1)}, 10, "items 0 and 1 to be checkpointed")
    deployment.worker("b")

    a.kill()
    again = [waiting(run, timeout=detection_bound() + 10), waiting(run, timeout=10)]
    assert all(w["attempt"] == 2 and w["worker"].startswith("b@") for w in again)
    open_gate(run)
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded", done.error
    assert done.output == [0, 10, 20, 30] and done.restarts == 1

    started = side_effects(run, "started")
    assert {k: started[k] for k in map(key, range(4))} == {key(0): 1, key(1): 1, key(2): 2, key(3): 2}
    finished = side_effects(run, "finished")
    assert {k: finished[k] for k in map(key, range(4))} == {key(i): 1 for i in range(4)}
    assert reruns(run) == 0
