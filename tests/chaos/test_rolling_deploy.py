"""A rolling deploy: a worker of the old release and one of the new share the queue, and
the old one meets a workflow only the new release defines. It hands the message back to
the queue for the new worker: Celery dropped a step it did not know ("unregistered
task"), and a resume of a workflow it did not know failed the run as WorkflowNotFound."""

from __future__ import annotations

import pytest

import flowkit
from flowkit.testing import WorkerProcess
from tests.chaos.conftest import open_gate, waiting
from tests.chaos.workflows import QUEUE, doomed, held, ten
from tests.conftest import ROOT, wait_until


@pytest.fixture
def releases(chaos_app, deployment):
    """The new release's worker, one slot, and the old release's, which knows none of the
    crash tests' workflows, on the same queue."""
    new = deployment.worker("new", concurrency=1)
    old = WorkerProcess("tests.chaos.old_release_app", name="old", queues=(QUEUE,),
                        concurrency=2, env=deployment.env, cwd=ROOT, pool="threads")
    deployment.workers.append(old)  # stopped with the others
    old.start()
    return new, old


def busy(new: WorkerProcess) -> flowkit.Run:
    """A run holding the new worker's one slot, so the old worker takes what comes next."""
    blocker = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    assert waiting(blocker, timeout=30)["worker"].startswith("new@")
    return blocker


def test_a_step_an_old_worker_does_not_define_goes_back_to_the_queue(releases):
    new, old = releases
    blocker = busy(new)
    run = ten.start({"n": 0, "chunks": 1, "pause": 0.01})
    wait_until(lambda: f"step flowkit.step.chaos.work of run {run.id}" in old.output(), 30,
               "the old worker to meet the run's first step")
    assert "handed back to queue chaos, which new@" in old.output()
    # Celery's 30-line ERROR saying it was discarded, a traceback with it, is not said
    assert "Received unregistered task" not in old.output() and "Traceback" not in old.output()
    open_gate(blocker)
    done = run.wait(60)
    assert done.state == "succeeded", done.error
    assert done.output["n"] == 10
    started = {e.data["worker"] for e in run.events() if e.type == "step.started"}
    assert started and all(w.startswith("new@") for w in started), started


def test_a_resume_of_a_workflow_an_old_worker_does_not_define_goes_back_to_the_queue(releases):
    new, old = releases
    run = doomed.start({"n": 0, "chunks": 1, "pause": 0.01})
    assert run.wait(30).error["type"] == "RuntimeError"  # on the new worker: old has no step
    blocker = busy(new)
    flowkit.retry(run.id)  # its resume goes to the queue, where only the old worker is free
    wait_until(lambda: f"no workflow 'chaos.doomed' (run {run.id}); its resume goes back"
               in old.output(), 30, "the old worker to meet the resume")
    open_gate(blocker)
    wait_until(lambda: len([e for e in run.events() if e.type == "run.failed"]) == 2, 60,
               "the retried run to fail again")
    done = flowkit.get_run(run.id)
    assert done.state == "failed"
    assert done.error["type"] == "RuntimeError", done.error  # the step's, not WorkflowNotFound


def test_a_step_of_a_run_that_moved_on_is_dropped_not_handed_back_again(releases):
    """A run cancelled (or restarted, or failed by a resume that found its steps changed)
    while its step went round: new workers announcing the workflow but not the step (a
    release that renamed it) would hand it to one another once a second for good."""
    new, old = releases
    blocker = busy(new)
    run = ten.start({"n": 0, "chunks": 1, "pause": 0.01})
    wait_until(lambda: f"of run {run.id} (workflow 'chaos.ten') is not defined on this worker"
               in old.output(), 30, "the old worker to hand the step back")
    flowkit.cancel(run.id)
    wait_until(lambda: f"of run {run.id} is not defined on this worker, and its run has moved "
               "on: dropped" in old.output(), 30, "the old worker to drop it")
    open_gate(blocker)
    assert blocker.wait(30).state == "succeeded"
    assert flowkit.get_run(run.id).state == "cancelled"


def test_a_step_handed_back_too_many_times_is_dropped(releases):
    """The rounds are bounded: a step that the workers announcing its workflow do not
    define either (a release that renamed it) went round for good, each round holding a
    worker's consumer for a second."""
    from flowkit.engine.broker import get_app
    from flowkit.worker.unknown import HANDED_BACK, MOST_HAND_BACKS

    new, old = releases
    blocker = busy(new)  # a live run of the workflow, the new worker's slot taken
    get_app().send_task("flowkit.step.chaos.work", args=[{"n": 0}], queue=QUEUE,
                        kwargs={"run_id": blocker.id, "key": "2:chaos.work", "gen": 0},
                        headers={HANDED_BACK: MOST_HAND_BACKS})
    wait_until(lambda: f"of run {blocker.id} was handed back {MOST_HAND_BACKS} times and no "
               "worker took it: dropped" in old.output(), 30, "the old worker to drop it")
    open_gate(blocker)
    assert blocker.wait(30).state == "succeeded"
