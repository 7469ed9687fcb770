"""A worker that dies after checkpointing a step but before sending the next one, one that
dies having taken a run's next message from the queue before it began the step, one whose
branch of a join checkpointed but was never counted, a broker that refused the next message:
nothing is in flight and no lease lapses, yet the reaper notices and the run resumes."""

from __future__ import annotations

import pytest

from flowkit import config
from flowkit.store import get_store
from flowkit.testing import LocalRedis
from tests.chaos.conftest import (
    deployed,
    of_type,
    open_gate,
    reruns,
    side_effects,
    wait_for,
    waiting,
)
from tests.chaos.joins import BRANCH_QUEUE, DIE_BEFORE_COUNTING, joined
from tests.chaos.workflows import DIE_BEFORE_PUBLISH, handed_on, handoff, held, work

#: In the long session, beside the rest: they wait out heartbeat lapses and reaper sweeps
#: (5-6 s each).
pytestmark = pytest.mark.long


def test_a_worker_lost_between_steps_is_noticed_and_the_run_resumes(chaos_app, deployment):
    run = killed_between_the_steps(deployment, DIE_BEFORE_PUBLISH)
    s = config.get_settings()
    resumes_once(run, s.heartbeat_lapse + 2 * s.reaper_interval + 15,
                 reason="worker lost between steps")


def test_a_worker_lost_with_the_next_step_taken_but_not_begun_is_noticed_and_the_run_resumes(
        chaos_app, deployment):
    """The message was handed off (the run waits in the broker, not lost between steps), then
    a worker took it and died: it is in no queue, and on Redis it came back only after the
    visibility timeout (an hour); the reaper re-drove the run after FLOWKIT_STALL_TIMEOUT
    (15 minutes; a fresh-clone run of the loaded kill test met it)."""
    run = killed_between_the_steps(deployment, f"chaos:die-on-taking:{handed_on.task_name}")
    s = config.get_settings()
    # quiet for a lapse, seen lost once, then again a lapse later
    resumes_once(run, 2 * s.heartbeat_lapse + 3 * s.reaper_interval + 15,
                 reason="stranded")


def test_a_worker_lost_with_a_run_s_first_step_taken_but_not_begun_is_noticed_and_it_starts(
        chaos_app, deployment):
    """The queued run's first message left the queue with a worker that died: the run
    waited for FLOWKIT_QUEUED_TIMEOUT (5 minutes)."""
    a = deployment.worker("a")
    deployment.beat()
    get_store().redis.set(f"chaos:die-on-taking:{work.task_name}", 1)
    run = handoff.start({"n": 0, "chunks": 3, "pause": 0.1})
    assert a.proc.wait(20) == -9, "the worker was not killed as it took the first step"
    assert run.refresh().state == "queued"
    deployment.worker("b")
    s = config.get_settings()
    resumes_once(run, 2 * s.heartbeat_lapse + 3 * s.reaper_interval + 15,
                 reason="stranded: queued")


def test_a_join_whose_branch_was_never_counted_runs_once_the_run_is_seen_stranded(
        chaos_app, deployment):
    """A branch's worker died after the branch checkpointed, before the join counted it;
    the other branch then ended on a live worker, which the run names as its last holder:
    not orphaned, and the join was never sent. The run waited for FLOWKIT_STALL_TIMEOUT
    (15 minutes) with every branch done."""
    a = deployment.worker("a", queues=(BRANCH_QUEUE,))
    deployment.worker("b")
    deployment.beat()
    get_store().redis.set(DIE_BEFORE_COUNTING, 1)  # armed first: the branch ends in ~10 ms
    run = joined.start({"n": 0, "chunks": 1, "pause": 0.01})
    waiting(run)  # the second branch holds on b
    assert a.proc.wait(20) == -9, "the first branch's worker was not killed"
    open_gate(run)  # the second branch ends on b, alive
    s = config.get_settings()
    done = run.wait(2 * s.heartbeat_lapse + 3 * s.reaper_interval + 15)
    assert done.state == "succeeded", done.error
    [restarted] = of_type(run.events(), "run.restarted")
    assert restarted.data["reason"].startswith("stranded")
    started = side_effects(run, "started")
    assert len(started) == 3 and set(started.values()) == {1}, started  # each step once
    assert reruns(run) == 0


def killed_between_the_steps(deployment, flag: str):
    """A handoff run whose worker ``a`` SIGKILLs itself where ``flag`` says
    (tests.chaos.workflows), armed before the run starts (set after, it came too late
    under load); worker ``b`` is up to take the run on."""
    a = deployment.worker("a")
    deployment.beat()
    get_store().redis.set(flag, 1)
    run = handoff.start({"n": 0, "chunks": 3, "pause": 0.1})
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


def test_a_next_message_the_broker_refused_is_sent_once_the_run_is_seen_stranded(
        flowkit_env, store, monkeypatch, tmp_path):  # store: no earlier test's runs to sweep
    """The broker was away as a step checkpointed: the chain's next message could not be
    sent, and the worker that held the run lived on (not orphaned). The run waited for
    FLOWKIT_STALL_TIMEOUT (15 minutes) once the broker was back."""
    with LocalRedis(appendonly=True) as broker, deployed(
            monkeypatch, tmp_path, flowkit_env["FLOWKIT_REDIS_URL"], broker.url,
            FLOWKIT_INLINE_STEPS_SECONDS="0") as deployment:
        a = deployment.worker("a")
        deployment.beat()
        run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
        waiting(run)
        broker.stop(kill=True)
        open_gate(run)
        wait_for(lambda: "1:chaos.hold" in get_store().checkpoints(run.id), 20,
                 "the held step's checkpoint")
        # Celery's own word that it gave up sending (any OperationalError matched before)
        wait_for(lambda: "Giving up refused callback publish for 'flowkit.step.chaos.work'"
                 in a.output(), 30, "the worker to give up sending the next step")
        broker.start()
        s = config.get_settings()
        done = run.wait(2 * s.heartbeat_lapse + 3 * s.reaper_interval + 20)
        assert done.state == "succeeded", done.error
        restarted = of_type(run.events(), "run.restarted")
        assert len(restarted) == 1, f"no stranded restart; worker a said:\n{a.output()[-6000:]}"
        assert restarted[0].data["reason"].startswith("stranded")
        assert side_effects(run, "started") == {
            "0:chaos.work": 1, "1:chaos.hold": 1, "2:chaos.work": 1}
        assert reruns(run) == 0
