"""Redis down for minutes under a worker (prefork), beat and the web process: each rides
the outage out, and once Redis is back the runs abandoned during it are restarted by the
reaper and new runs start. The outage lasts FLOWKIT_TEST_OUTAGE_SECONDS (300 by default):
what went wrong before took a couple of minutes to show."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from flowkit import get_run
from flowkit.store import get_store
from tests.api.conftest import API_KEY
from tests.api.helpers import Gunicorn
from tests.chaos.conftest import Deployment, reruns, wait_for
from tests.chaos.workflows import ten
from tests.conftest import FAST, ROOT

OUTAGE = float(os.environ.get("FLOWKIT_TEST_OUTAGE_SECONDS", "300"))
RUNS = 4


@pytest.mark.long
@pytest.mark.timeout(OUTAGE + 300)
def test_worker_beat_and_web_ride_out_a_long_redis_outage(private_redis, tmp_path):
    env = {
        **FAST, "PYTHONPATH": ROOT, "FLOWKIT_DEFAULT_QUEUE": "chaos",
        "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{private_redis.port}/1",
        "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{private_redis.port}/0",
        "FLOWKIT_STALL_TIMEOUT": "10", "FLOWKIT_QUEUED_TIMEOUT": "10",
    }
    deployment = Deployment(env, tmp_path)
    web = Gunicorn(env, tmp_path / "web.log", FLOWKIT_API_KEYS=API_KEY,
                   FLOWKIT_WORKFLOW_MODULES="tests.chaos.workflows")
    try:
        worker = deployment.worker("a", pool="prefork", concurrency=2)
        beat = deployment.beat()
        web.start()
        api = httpx.Client(base_url=web.url, timeout=30,
                           headers={"Authorization": f"Bearer {API_KEY}"})
        runs = [ten.start({"n": 0, "chunks": 2, "pause": 0.3}) for _ in range(RUNS)]
        store = get_store()
        wait_for(lambda: all(store.checkpoints(r.id) for r in runs), 30, "the runs under way")

        private_redis.stop()  # down for minutes; its AOF keeps what was written
        during = api.get("/healthz")
        assert during.status_code == 503 and during.headers["Retry-After"]
        time.sleep(OUTAGE)  # the outage itself: its length is what this test is about
        assert worker.alive(), f"the worker exited during the outage:\n{worker.output()}"
        assert beat.poll() is None, "beat exited during the outage"
        assert web.proc.poll() is None, "the web process exited during the outage"
        private_redis.start()

        finished = [run.wait(180) for run in runs]
        assert [r.state for r in finished] == ["succeeded"] * RUNS, [
            (r.id, r.state, r.error) for r in finished if r.state != "succeeded"]
        assert all(reruns(run) == 0 for run in runs)
        started = api.post("/workflows/chaos.ten/runs",
                           json={"n": 0, "chunks": 1, "pause": 0.01})
        assert started.status_code == 202, started.text
        new_run = get_run(started.json()["id"]).wait(60)
        assert new_run.state == "succeeded", worker.output()
        health = api.get("/healthz").json()
        assert health["status"] == "ok", health
        assert "Unrecoverable error" not in worker.output()
    finally:
        if web.proc is not None:
            web.stop()
        deployment.stop()
