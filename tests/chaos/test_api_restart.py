"""The web process is SIGKILLed and restarted while WebSocket clients follow runs:
every client reconnects with its last event id and misses nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest
import websocket

from flowkit import events
from tests.api.helpers import Gunicorn
from tests.conftest import open_gate, reached_gate
from tests.workflows import streaming

RUNS = 6
BEFORE, AFTER = 30, 300


class Follower(threading.Thread):
    """A client following one run over WebSocket, reconnecting with its last id."""

    def __init__(self, ws_url: str, run_id: str) -> None:
        super().__init__(daemon=True)
        self.url = f"{ws_url}/runs/{run_id}/stream"
        self.received: list[dict] = []
        self.reconnects = 0
        self.mid_stream = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            after = self.received[-1]["id"] if self.received else None
            try:
                sock = websocket.create_connection(
                    self.url + (f"?after={after}" if after else ""), timeout=30)
            except OSError:
                time.sleep(0.05)  # the server is down: retry, as a browser would
                continue
            try:
                for message in iter(sock.recv, ""):
                    event = json.loads(message)
                    self.received.append(event)
                    if len(self.received) >= BEFORE:
                        self.mid_stream.set()
                    if event["type"] in events.TERMINAL:
                        return
            except (websocket.WebSocketException, OSError):
                self.reconnects += 1
            finally:
                sock.close()


@pytest.fixture
def web(flowkit_env, store, tmp_path):
    server = Gunicorn(flowkit_env, tmp_path / "web.log", FLOWKIT_WEB_THREADS="64",
                      FLOWKIT_API_OPEN="true").start()
    yield server
    if server.proc.poll() is None:
        server.kill()


def test_clients_reconnect_after_an_api_restart_and_miss_nothing(web, start_worker):
    start_worker("api-restart", concurrency=RUNS + 2)
    runs = [streaming.start({"before": BEFORE, "after": AFTER}) for _ in range(RUNS)]
    followers = [Follower("ws" + web.url[4:], run.id) for run in runs]
    for follower in followers:
        follower.start()
    for run, follower in zip(runs, followers, strict=True):
        reached_gate(run, "streamer")
        assert follower.mid_stream.wait(20), "a client never got its first chunks"

    web.kill()  # every socket drops; the runs go on writing to their streams
    for run in runs:
        open_gate(run, "streamer")
    web.start()

    for run, follower in zip(runs, followers, strict=True):
        follower.join(60)
        assert not follower.is_alive(), f"client of {run.id} never saw the end"
        history = [e.to_dict() for e in run.events()]
        assert [e["id"] for e in follower.received] == [e["id"] for e in history]
        assert follower.received == history  # gapless, duplicate-free, in order
        assert [e["type"] for e in follower.received].count("run.succeeded") == 1
        assert follower.received[-1]["type"] == "run.succeeded"
        assert follower.reconnects >= 1
