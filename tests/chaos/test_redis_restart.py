"""Redis restarted under running workflows (AOF on, fsync always): runs continue, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import flowkit
from flowkit import component
from flowkit.store import get_store
from tests.chaos.conftest import Deployment, reruns, side_effects, wait_for
from tests.chaos.workflows import ten
from tests.conftest import FAST, ROOT

RUNS = 8


@pytest.mark.long  # mostly waiting out the outage: beside the rest (scripts/test)
def test_runs_in_flight_continue_after_redis_restarts(private_redis, tmp_path):
    env = {
        "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/1",
        "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/0",
        "FLOWKIT_STALL_TIMEOUT": "10",
        "FLOWKIT_QUEUED_TIMEOUT": "10",
    }
    deployment = Deployment({**FAST, "PYTHONPATH": ROOT, "FLOWKIT_DEFAULT_QUEUE": "chaos", **env},
                            tmp_path)
    try:
        deployment.worker("a")
        deployment.worker("b")
        deployment.beat()
        runs = [ten.start({"n": 0, "chunks": 2, "pause": 0.2}) for _ in range(RUNS)]
        store = get_store()
        wait_for(lambda: sum(store.redis.hlen(store.keys.checkpoints(r.id)) for r in runs) >= RUNS * 3,
                 30, "the runs to be under way")
        done_before = {r.id: store.checkpoints(r.id) for r in runs}
        assert sum(len(c) < 10 for c in done_before.values()) >= RUNS // 2, "too late to matter"

        private_redis.stop(kill=True)  # a crash: only what the AOF holds comes back
        private_redis.start()

        finished = [run.wait(120) for run in runs]
    finally:
        deployment.stop()
    assert [r.state for r in finished] == ["succeeded"] * RUNS, [
        (r.id, r.state, r.error) for r in finished if r.state != "succeeded"
    ]
    for run in runs:
        assert run.refresh().output["n"] == 10
        after = store.checkpoints(run.id)
        assert all(after[step] == out for step, out in done_before[run.id].items()), "a checkpoint changed"
        assert reruns(run) == 0
        assert set(side_effects(run, "finished")) == {f"{i}:chaos.work" for i in range(10)}
        history = run.events()
        assert [e.terminal for e in history].count(True) == 1 and history[-1].type == "run.succeeded"
        ids = [tuple(map(int, e.id.split("-"))) for e in history]
        assert ids == sorted(set(ids))


@component(name="t.follow_outage_step")
def follow_outage_step(data: dict) -> dict:
    return data


#: Its runs stay queued: nothing consumes its queue, so the test says when one ends.
parked = flowkit.Workflow("t.follow_outage", [follow_outage_step], queue="no-worker-consumes-this")


@pytest.mark.parametrize("command", ["follow", "events -f"])
def test_a_cli_follow_goes_on_after_redis_restarts(private_redis, command):
    """``flowkit events RUN -f`` quit (exit 1, "cannot reach Redis") while the run went on;
    ``flowkit follow`` waited: both wait now."""
    run = parked.start({})
    env = {**os.environ, "PYTHONPATH": ROOT,
           "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/1",
           "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/0"}
    argv = ["follow", run.id] if command == "follow" else ["events", run.id, "-f"]
    follower = subprocess.Popen([sys.executable, "-m", "flowkit.cli", *argv], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    queued, cancelled = (("run queued", "run cancelled") if command == "follow"
                         else ("  run.queued", "  run.cancelled"))
    try:
        if command == "follow":
            assert follower.stdout.readline().startswith(f"following run {run.id}")
        assert queued.strip() in follower.stdout.readline()

        private_redis.stop(kill=True)
        assert "cannot reach Redis" in follower.stderr.readline()  # said, not quit
        private_redis.start()
        assert follower.stderr.readline().startswith("flowkit: Redis answers again")

        flowkit.cancel(run.id)  # an event written after the restart ends the follow
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert follower.returncode == (1 if command == "follow" else 0), err
    assert cancelled in out, out
    assert queued not in out, "an event shown before the restart was shown again"


def test_flowkit_run_whose_redis_goes_away_before_its_follow_begins_waits_for_it(
        private_redis, capsys, monkeypatch):
    """Redis gone between the start and the follow's first read: `flowkit run` said only
    "cannot reach Redis", without the id of the run it had started (started again, it ran
    twice). Its follow now waits the outage out, as one under way does."""
    import argparse
    import queue
    import threading

    from flowkit import config
    from flowkit.cli.run import LocalRuns

    run = parked.start({})
    # as the CLI sets it: a person waits at a shell
    monkeypatch.setattr(config, "_settings", config.get_settings().replace(redis_retry_seconds=1))
    private_redis.stop(kill=True)
    events = LocalRuns(argparse.Namespace()).events(run.id, "0")
    first: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: first.put(next(events)), daemon=True).start()
    wait_for(lambda: "cannot reach Redis" in capsys.readouterr().err, 30,
             "the follow to say Redis is away")
    private_redis.start()
    assert first.get(timeout=30)["type"] == "run.queued"
    assert f"Redis answers again; following run {run.id}" in capsys.readouterr().err
