"""The reference web process (api/app.py under gunicorn gthread) serves REST and WebSocket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from flowkit.local import free_port
from tests.api.helpers import start, ws_connect, ws_read
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def gunicorn_web(flowkit_env, worker, tmp_path_factory):
    port = free_port()
    # to a file: an unread pipe fills up and blocks gunicorn's logging (and its shutdown)
    log = open(tmp_path_factory.mktemp("gunicorn") / "web.log", "w+")  # noqa: SIM115
    env = {**os.environ, **flowkit_env, "FLOWKIT_WEB_BIND": f"127.0.0.1:{port}",
           "FLOWKIT_WEB_THREADS": "16", "FLOWKIT_API_KEYS": "deploy-key",
           "FLOWKIT_API_SECRET": "deploy-secret", "FLOWKIT_WORKFLOW_MODULES": "tests.workflows"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py",
                             "api.app:app"], cwd=ROOT, env=env, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"gunicorn did not start: {log.read()}") from None
            time.sleep(0.1)  # still binding its port; nothing to await on
    yield url
    proc.terminate()
    proc.wait(30)
    log.close()


def test_gunicorn_serves_the_api_and_relays_a_run_over_websocket(gunicorn_web, store):
    with httpx.Client(base_url=gunicorn_web, headers={"Authorization": "Bearer deploy-key"}) as c:
        assert c.get("/runs").status_code == 200
        assert httpx.get(f"{gunicorn_web}/runs").status_code == 401
        run = start(c, "chatty", {"n": 1})
    events = ws_read(ws_connect(f"ws{gunicorn_web[4:]}/runs/{run['id']}/stream", token=run["token"]))
    assert events[-1]["type"] == "run.succeeded"
    assert [e["chunk"] for e in events if e["type"] == "step.output"] == ["alpha", "beta", "gamma"]


def test_sigterm_ends_streams_at_once_with_1012_and_the_server_exits(flowkit_env, worker, store):
    """A deploy stops the web process: followers are told to reconnect (1012) right away,
    and the process exits without waiting out gunicorn's 30 s graceful timeout."""
    import signal

    import websocket

    from tests.conftest import open_gate, reached_gate
    from tests.workflows import streaming

    port = free_port()
    env = {**os.environ, **flowkit_env, "FLOWKIT_WEB_BIND": f"127.0.0.1:{port}",
           "FLOWKIT_WEB_THREADS": "16", "FLOWKIT_API_OPEN": "true",
           "FLOWKIT_WORKFLOW_MODULES": "tests.workflows"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py",
                             "api.app:app"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)  # still binding its port; nothing to await on
        run = streaming.start({"before": 3, "after": 3})
        reached_gate(run, "streamer")
        sock = websocket.create_connection(f"ws://127.0.0.1:{port}/runs/{run.id}/stream", timeout=20)
        got = [json.loads(sock.recv()) for _ in range(6)]  # queued, started, step, 3 chunks
        assert got[-1]["type"] == "step.output"

        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        opcode, frame = sock.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame[:2], "big") == 1012
        assert proc.wait(15) == 0
        assert time.monotonic() - stopped < 10
    finally:
        if proc.poll() is None:
            proc.kill()
        open_gate(run, "streamer")
