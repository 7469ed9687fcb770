"""Recovery under load: long runs of every shape on 3 prefork workers, one SIGKILLed every
few seconds. Restarted runs continue at their frontier, ahead of fresh work; a restart after
progress does not spend the run's budget; a run whose next message is in the broker is not
taken for one whose worker was lost between steps."""

from __future__ import annotations

import random
import time

import pytest

from bench.loaded import Recovery
from flowkit.engine.doctor import running_steps
from tests.chaos.conftest import reruns
from tests.chaos.workflows import long_run

RUNS = 12
CHAOS_SECONDS = 30


@pytest.mark.long  # a fixed time of kills, mostly waiting: beside the rest (scripts/test)
def test_runs_under_repeated_kills_all_succeed_and_restart_only_for_real_losses(
        chaos_app, deployment):
    rng = random.Random(7)
    workers = [deployment.worker(f"w{i}", pool="prefork", concurrency=2) for i in range(3)]
    deployment.beat()
    # FLOWKIT_MAX_RESTARTS stays 3: only restarts without progress count
    runs = [long_run.start({"n": 0, "chunks": 1, "pause": 0.15}) for _ in range(RUNS)]
    kills: dict[str, float] = {}
    ends = time.monotonic() + CHAOS_SECONDS
    generation = 0
    while time.monotonic() < ends:
        time.sleep(rng.uniform(3, 8))  # the chaos schedule itself, not a synchronisation
        victim = rng.randrange(len(workers))
        # a worker that holds a step now, if any does: on a loaded machine the kills could
        # all land on workers between steps, and the test then proved nothing
        busy = [i for i, w in enumerate(workers) if w.name in holders()]
        if busy and victim not in busy:
            victim = busy[victim % len(busy)]
        kills[workers[victim].name] = time.time()
        workers[victim].kill()
        generation += 1
        workers[victim] = deployment.worker(f"w{victim}g{generation}", pool="prefork",
                                            concurrency=2)
    finished = [run.wait(240) for run in runs]
    assert [r.state for r in finished] == ["succeeded"] * RUNS, [
        (r.id, r.state, r.error) for r in finished if r.state != "succeeded"]
    assert all(reruns(run) == 0 for run in runs)

    recovery = Recovery()
    for run in runs:
        recovery.add(run.events(), kills)
    assert recovery.restarts > 0, "no kill hit a step: the test proved nothing"
    assert recovery.spurious_share <= 0.05, (
        f"{recovery.between_steps} of {recovery.restarts} restarts were 'between steps'")


def holders() -> set[str]:
    """The names of the workers holding a step's lease now (a lease's worker is name@host)."""
    return {str(step["worker"]).partition("@")[0] for step in running_steps()}
