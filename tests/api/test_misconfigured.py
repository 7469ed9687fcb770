"""A setting no retry fixes, met while the web process serves: Redis refusing a password
rotated under it. The API answers ``503 misconfigured`` and logs the cause in one line; it
answered 500 and logged a traceback, and the caller could not tell it from a bug."""

from __future__ import annotations

import httpx
import pytest
import redis

from flowkit.testing import LocalRedis
from tests.api.conftest import API_KEY
from tests.api.helpers import Gunicorn

pytestmark = pytest.mark.integration


def test_a_password_rotated_under_the_web_process_answers_503_misconfigured(
        flowkit_env, tmp_path):
    with LocalRedis() as server:
        env = {**flowkit_env, "FLOWKIT_REDIS_URL": server.url, "FLOWKIT_BROKER_URL": server.url}
        log = tmp_path / "gunicorn.log"
        web = Gunicorn(env, log, FLOWKIT_API_KEYS=API_KEY).start()
        try:
            with httpx.Client(base_url=web.url, timeout=30,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                run = client.post("/workflows/simple/runs", json={"n": 1})
                assert run.status_code == 202, run.text
                admin = redis.Redis(port=server.port)
                admin.config_set("requirepass", "rotated")
                admin.client_kill_filter(_type="normal", skipme=True)  # its pool reconnects
                answer = client.get(f"/runs/{run.json()['id']}")
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "misconfigured"
            assert "rotated" not in answer.text and "password" not in answer.text
        finally:
            web.stop()
    logged = log.read_text()
    assert "Traceback" not in logged, logged[-3000:]
    assert "flowkit API: misconfigured: flowkit's Redis refused its credentials" in logged
