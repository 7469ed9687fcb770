"""Waiting runs at scale and through crashes: 500 of them on a worker of 2 slots, a worker
SIGKILLed and Redis restarted from its AOF while they wait: nothing restarts, nothing is
lost, and input POSTed over HTTP resumes every one."""

from __future__ import annotations

import httpx
import pytest

import flowkit
from flowkit import events
from tests.api.conftest import API_KEY
from tests.api.helpers import Gunicorn
from tests.chaos.conftest import Deployment, reruns, wait_for
from tests.chaos.workflows import asking, ten
from tests.conftest import FAST, ROOT

#: 500 runs through worker processes and a web server of their own: beside the rest.
pytestmark = pytest.mark.long

RUNS = 500


def all_waiting(runs: list[flowkit.Run], timeout: float) -> None:
    wait_for(lambda: all(r.refresh().state == "waiting" for r in runs), timeout,
             f"all {len(runs)} runs waiting")


def answer_all(web_url: str, runs: list[flowkit.Run]) -> None:
    with httpx.Client(base_url=web_url, timeout=30,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as api:
        for run in runs:
            response = api.post(f"/runs/{run.id}/input/approval", json={"ok": True})
            assert response.status_code == 202, response.text


def test_500_waiting_runs_hold_no_slot_and_500_posted_inputs_finish_them(
        chaos_app, deployment, chaos_env, tmp_path):
    deployment.worker("two-slots", concurrency=2)
    web = Gunicorn(chaos_env, tmp_path / "web.log", FLOWKIT_API_KEYS=API_KEY,
                   FLOWKIT_WORKFLOW_MODULES="tests.chaos.workflows").start()
    try:
        runs = [asking.start({"n": 0, "chunks": 0}) for _ in range(RUNS)]
        all_waiting(runs, 120)
        # two slots, 500 paused runs: another run still goes through at once
        assert ten.start({"n": 0, "chunks": 0}).result(30)["n"] == 10
        answer_all(web.url, runs)
        finished = [run.wait(120) for run in runs]
    finally:
        web.stop()
    assert [r.state for r in finished] == ["succeeded"] * RUNS
    assert all(r.output == {"n": 3, "chunks": 0, "ok": True} for r in finished)


def test_a_worker_killed_and_redis_restarted_while_runs_wait_lose_nothing(private_redis, tmp_path):
    env = {**FAST, "PYTHONPATH": ROOT, "FLOWKIT_DEFAULT_QUEUE": "chaos",
           "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/1",
           "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/0"}
    deployment = Deployment(env, tmp_path)
    web = Gunicorn(env, tmp_path / "web.log", FLOWKIT_API_KEYS=API_KEY,
                   FLOWKIT_WORKFLOW_MODULES="tests.chaos.workflows")
    try:
        a = deployment.worker("a")
        deployment.beat()
        runs = [asking.start({"n": 0, "chunks": 1, "pause": 0.01}) for _ in range(20)]
        all_waiting(runs, 60)
        a.kill()  # no worker holds anything of a waiting run
        private_redis.stop(kill=True)  # a crash: what comes back is what the AOF holds
        private_redis.start()
        deployment.worker("b")
        web.start()
        # several reaper sweeps pass: a waiting run is not a lost one
        marker = ten.start({"n": 0, "chunks": 2, "pause": 0.2})  # ~4 s: some 8 sweeps
        assert marker.result(60)["n"] == 10
        assert all(r.refresh().state == "waiting" for r in runs)
        answer_all(web.url, runs)
        finished = [run.wait(60) for run in runs]
    finally:
        if web.proc is not None:
            web.stop()
        deployment.stop()
    assert [r.state for r in finished] == ["succeeded"] * len(runs)
    for run in runs:
        history = run.events()
        assert not [e for e in history if e.type == events.RUN_RESTARTED], "a waiting run restarted"
        assert [e.type for e in history].count(events.RUN_WAITING) == 1
        assert reruns(run) == 0
