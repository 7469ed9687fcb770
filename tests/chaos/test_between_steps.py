"""A worker that dies after checkpointing a step but before sending the next one, or one
that dies having taken a run's next message from the queue before it began the step:
nothing is in flight and no lease lapses, yet the reaper notices and the run resumes."""

from __future__ import annotations

from flowkit import config
from flowkit.store import get_store
from tests.chaos.conftest import of_type, reruns, side_effects
from tests.chaos.workflows import handoff


def test_a_worker_lost_between_steps_is_noticed_and_the_run_resumes(chaos_app, deployment):
    run = killed_between_the_steps(deployment, "chaos:die-before-publish")
    s = config.get_settings()
    resumes_once(run, s.heartbeat_lapse + 2 * s.reaper_interval + 15,
                 reason="worker lost between steps")


def test_a_worker_lost_with_the_next_step_taken_but_not_begun_is_noticed_and_the_run_resumes(
        chaos_app, deployment):
    """The message was handed off (the run waits in the broker, not lost between steps), then
    a worker took it and died: it is in no queue, and on Redis it came back only after the
    visibility timeout (an hour); the reaper re-drove the run after FLOWKIT_STALL_TIMEOUT
    (15 minutes; a fresh-clone run of the loaded kill test met it)."""
    run = killed_between_the_steps(deployment, "chaos:die-on-taking")
    s = config.get_settings()
    # quiet for a lapse, seen lost once, then again a lapse later
    resumes_once(run, 2 * s.heartbeat_lapse + 3 * s.reaper_interval + 15,
                 reason="next step lost in delivery")


def killed_between_the_steps(deployment, flag: str):
    """A handoff run whose worker ``a`` SIGKILLs itself where ``flag`` says
    (tests.chaos.workflows); worker ``b`` is up to take the run on."""
    a = deployment.worker("a")
    deployment.beat()
    run = handoff.start({"n": 0, "chunks": 3, "pause": 0.1})
    get_store().redis.set(f"{flag}:{run.id}", 1)
    assert a.proc.wait(20) == -9, f"the worker was not killed ({flag})"
    assert run.refresh().state == "running" and not run.refresh().done
    deployment.worker("b")
    return run


def resumes_once(run, seconds: float, reason: str) -> None:
    done = run.wait(seconds)
    assert done.state == "succeeded", done.error
    assert done.output["n"] == 2
    [restarted] = of_type(run.events(), "run.restarted")
    assert restarted.data["reason"].startswith(reason)
    assert "superseded" not in restarted.data  # nothing was in flight
    assert side_effects(run, "started") == {"0:chaos.work": 1, "1:chaos.handed_on": 1}
    assert reruns(run) == 0
