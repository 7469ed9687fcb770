"""Client-side helpers for the API tests: WebSocket and SSE readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import httpx_sse
import websocket

TERMINAL = ("run.succeeded", "run.failed", "run.cancelled")


def ws_connect(url: str, token: str | None = None, after: str | None = None,
               key: str | None = None) -> websocket.WebSocket:
    params = []
    if after:
        params.append(f"after={after}")
    if token:
        params.append(f"token={token}")
    full = url + ("?" + "&".join(params) if params else "")
    header = [f"Authorization: Bearer {key}"] if key else []
    return websocket.create_connection(full, timeout=20, header=header)


def ws_read(sock: websocket.WebSocket, stop=None) -> list[dict]:
    """Events until the server closes after the terminal event, or until ``stop(events)``."""
    got: list[dict] = []
    while True:
        try:
            message = sock.recv()
        except websocket.WebSocketConnectionClosedException:
            return got
        if not message:  # close frame
            return got
        got.append(json.loads(message))
        if stop is not None and stop(got):
            return got


def sse_read(client: httpx.Client, path: str, headers: dict | None = None, stop=None) -> list[dict]:
    """SSE events of ``path`` until the server ends the stream, or until ``stop(events)``."""
    got: list[dict] = []
    with httpx_sse.connect_sse(client, "GET", path, headers=headers or {}) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if not sse.data:
                continue  # a keep-alive comment: EventSource dispatches nothing for it
            event = json.loads(sse.data)
            assert sse.id == event["id"]
            got.append(event)
            if stop is not None and stop(got):
                break
    return got


def start(client: httpx.Client, workflow: str, body: dict, prefix: str = "", **kwargs) -> dict:
    response = client.post(f"{prefix}/workflows/{workflow}/runs", json=body, **kwargs)
    assert response.status_code in (200, 202), response.text
    return response.json()


class Gunicorn:
    """The reference web process (``api.app`` under ``api/gunicorn.conf.py``) on a loopback
    port, serving the test workflows; it logs to a file (an unread pipe would stall it)."""

    def __init__(self, env: dict[str, str], log_path, port: int | None = None, **settings: str):
        from flowkit.testing import free_port

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "FLOWKIT_WEB_BIND": f"127.0.0.1:{self.port}",
                    "FLOWKIT_WEB_THREADS": "16", "FLOWKIT_WORKFLOW_MODULES": "tests.workflows",
                    **settings}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Gunicorn:
        from tests.conftest import ROOT

        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py", "api.app:app"],
                cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start:\n{Path(self.log_path).read_text()}")
            time.sleep(0.05)  # still binding its port; nothing to await on

    def kill(self) -> None:
        """SIGKILL the master and its workers: a crash."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout)
