"""A worker that dies after checkpointing a step but before sending the next one:
nothing is in flight and no lease lapses, yet the reaper notices and the run resumes."""

from __future__ import annotations

from flowkit import config
from flowkit.store import get_store
from tests.chaos.conftest import of_type, reruns, side_effects
from tests.chaos.workflows import handoff


def test_a_worker_lost_between_steps_is_noticed_and_the_run_resumes(chaos_app, deployment):
    a = deployment.worker("a")
    deployment.beat()
    run = handoff.start({"n": 0, "chunks": 3, "pause": 0.1})
    get_store().redis.set(f"chaos:die-before-publish:{run.id}", 1)
    assert a.proc.wait(20) == -9, "the worker was not killed before handing the run on"
    assert run.refresh().state == "running" and not run.refresh().done
    deployment.worker("b")

    s = config.get_settings()
    done = run.wait(s.heartbeat_lapse + 2 * s.reaper_interval + 15)
    assert done.state == "succeeded", done.error
    assert done.output["n"] == 2
    [restarted] = of_type(run.events(), "run.restarted")
    assert "worker lost between steps" in restarted.data["reason"]
    assert "superseded" not in restarted.data  # nothing was in flight
    assert side_effects(run, "started") == {"0:chaos.work": 1, "1:chaos.handed_on": 1}
    assert reruns(run) == 0
