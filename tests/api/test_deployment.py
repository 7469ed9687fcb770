"""The reference web process (api/app.py under gunicorn gthread) serves REST and WebSocket."""

from __future__ import annotations

import http.client
import json
import socket
import time

import httpx
import pytest

from tests.api.helpers import Gunicorn, start, ws_connect, ws_read
from tests.conftest import wait_until


@pytest.fixture(scope="module")
def gunicorn_web(flowkit_env, worker, tmp_path_factory):
    web = Gunicorn(flowkit_env, tmp_path_factory.mktemp("gunicorn") / "web.log",
                   FLOWKIT_API_KEYS="deploy-key", FLOWKIT_API_SECRET="deploy-secret",
                   FLOWKIT_WEB_ACCESS_LOG="1").start()
    yield web
    web.stop()


def test_gunicorn_serves_the_api_and_relays_a_run_over_websocket(gunicorn_web, store):
    url = gunicorn_web.url
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer deploy-key"}) as c:
        assert c.get("/runs").status_code == 200
        assert httpx.get(f"{url}/runs").status_code == 401
        run = start(c, "chatty", {"n": 1})
    events = ws_read(ws_connect(f"ws{url[4:]}/runs/{run['id']}/stream", token=run["token"]))
    assert events[-1]["type"] == "run.succeeded"
    assert [e["chunk"] for e in events if e["type"] == "step.output"] == ["alpha", "beta", "gamma"]


@pytest.mark.long  # it mostly waits: beside the rest (the fast tier neared 15 min)
def test_followers_that_never_answer_the_close_do_not_stop_the_process_answering(
        gunicorn_web, store):
    """Each WebSocket follower that did not answer our close frame (stalled, gone, a slow
    reader) was left open, and gunicorn's main loop closed them one after another, waiting
    2 s for each client: the process answered nothing for 2 s a follower (18 s for 35)."""
    url = gunicorn_web.url
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer deploy-key"},
                      timeout=60) as c:
        run = start(c, "approval", {"n": 1})
        silent = [stalled_follower(url, f"/runs/{run['id']}/stream?token={run['token']}")
                  for _ in range(10)]
        try:
            assert c.post(f"/runs/{run['id']}/input/approval",
                          json={"ok": True}).status_code == 202
            ended = time.monotonic()
            slowest = 0.0
            while time.monotonic() - ended < 8:  # the closes' 2 s wait, then 2 s a follower
                asked = time.monotonic()
                assert c.get("/healthz").status_code == 200
                slowest = max(slowest, time.monotonic() - asked)
            assert c.get(f"/runs/{run['id']}").json()["state"] == "succeeded"
            assert slowest < 4, f"/healthz took {slowest:.1f} s after the run ended"
        finally:
            for sock in silent:
                sock.close()


def stalled_follower(url: str, path: str) -> socket.socket:
    """A WebSocket client that opens its stream, then never reads nor answers again."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # the 101's headers, byte by byte: none of the stream after
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_the_access_log_does_not_keep_run_tokens(gunicorn_web, store):
    url = gunicorn_web.url
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer deploy-key"}) as c:
        run = start(c, "simple", {"n": 1}, params={"wait": 10})
    watch = f"{url}/runs/{run['id']}/watch?token={run['token']}"
    assert httpx.get(f"{url}/runs/{run['id']}/events", params={"after": "0", "token": run["token"]},
                     headers={"Referer": watch}).status_code == 200
    line = f"GET /runs/{run['id']}/events?after=0&token=*** HTTP/1.1"
    # gunicorn writes the line once the response is sent: no event tells when
    wait_until(lambda: line in gunicorn_web.log_path.read_text(), message=line)
    logged = gunicorn_web.log_path.read_text()
    assert run["token"] not in logged
    assert f"/runs/{run['id']}/watch?token=***" in logged  # the Referer, a watch page's URL


def test_the_access_log_blanks_a_token_whose_name_is_percent_encoded(gunicorn_web, store):
    """``tok%65n=`` is ``token=`` to Flask, and it authenticates: the log kept it whole."""
    url = gunicorn_web.url
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer deploy-key"}) as c:
        run = start(c, "simple", {"n": 1}, params={"wait": 10})
    host, port = url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("GET", f"/runs/{run['id']}/events?after=0&%74ok%65n={run['token']}")
    response = conn.getresponse()
    assert response.status == 200 and response.read()
    conn.close()
    line = f"GET /runs/{run['id']}/events?after=0&%74ok%65n=*** HTTP/1.1"
    wait_until(lambda: line in gunicorn_web.log_path.read_text(), message=line)
    assert run["token"] not in gunicorn_web.log_path.read_text()


def test_the_access_log_blanks_a_token_under_any_name_flask_does_not_read(gunicorn_web, store):
    """A run token after a ``;``, as ``token[]=``, ``token%00=`` or under another name is
    refused (Flask reads no ``token`` there), but the token is valid: the log kept it whole."""
    url = gunicorn_web.url
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer deploy-key"}) as c:
        run = start(c, "simple", {"n": 1}, params={"wait": 10})
    host, port = url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    queries = ["x=1;token=", "token[]=", "token%00=", "t="]
    for query in queries:
        conn.request("GET", f"/runs/{run['id']}?{query}{run['token']}")
        response = conn.getresponse()
        assert response.status == 401 and response.read()
    conn.close()
    lines = [f"GET /runs/{run['id']}?{query}*** HTTP/1.1" for query in queries]
    wait_until(lambda: all(line in gunicorn_web.log_path.read_text() for line in lines),
               message=str(lines))
    assert run["token"] not in gunicorn_web.log_path.read_text()


def test_the_packaged_config_keeps_gunicorns_statsd_metrics(flowkit_env, worker, tmp_path):
    """Its own logger class turned off the statsd logger gunicorn picks by itself."""
    import socket

    from flowkit.testing import free_port

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        statsd.bind(("127.0.0.1", 0))
        statsd.settimeout(20)
        web = Gunicorn(flowkit_env, tmp_path / "web.log", FLOWKIT_API_OPEN="true",
                       GUNICORN_CMD_ARGS=f"--statsd-host 127.0.0.1:{statsd.getsockname()[1]}",
                       port=free_port()).start()
        try:
            assert httpx.get(f"{web.url}/runs").status_code == 200
            seen = b""
            while b"gunicorn.requests:1|c" not in seen:
                seen += statsd.recv(4096) + b"\n"
        finally:
            web.stop()


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT", "SIGQUIT"])
def test_a_stop_signal_ends_streams_at_once_with_1012_and_the_server_exits(
    flowkit_env, worker, store, tmp_path, signame
):
    """A deploy stops the web process: followers are told to reconnect (1012) right away,
    and the process exits without waiting out gunicorn's 30 s graceful timeout. SIGINT (a
    Ctrl-C) and SIGQUIT (gunicorn's quick shutdown) waited it out, then dropped them."""
    import signal

    import websocket

    from tests.conftest import reached_gate
    from tests.workflows import streaming

    web = Gunicorn(flowkit_env, tmp_path / "web.log", FLOWKIT_API_OPEN="true").start()
    try:
        run = streaming.start({"before": 3, "after": 3})
        reached_gate(run, "streamer")
        sock = websocket.create_connection(f"ws://127.0.0.1:{web.port}/runs/{run.id}/stream",
                                           timeout=20)
        got = [json.loads(sock.recv()) for _ in range(6)]  # queued, started, step, 3 chunks
        assert got[-1]["type"] == "step.output"

        stopped = time.monotonic()
        web.proc.send_signal(getattr(signal, signame))
        opcode, frame = sock.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame[:2], "big") == 1012
        exits_soon(web, stopped)
    finally:
        stop_streaming(web, run)


def test_after_sigterm_a_request_on_a_kept_alive_connection_is_told_to_go_elsewhere(
    flowkit_env, worker, store, tmp_path
):
    """A follower reconnecting over its kept-alive connection was served by the stopping
    process again, which then waited out gunicorn's 30 s graceful timeout for it."""
    import signal

    from tests.conftest import reached_gate
    from tests.workflows import streaming

    web = Gunicorn(flowkit_env, tmp_path / "web.log", FLOWKIT_API_OPEN="true").start()
    try:
        run = streaming.start({"before": 3, "after": 3})
        reached_gate(run, "streamer")
        with httpx.Client(base_url=f"http://127.0.0.1:{web.port}", timeout=20) as client:
            with client.stream("GET", f"/runs/{run.id}/events",
                               headers={"Accept": "text/event-stream"}) as stream:
                lines = stream.iter_lines()
                while "step.output" not in next(lines):
                    pass
                stopped = time.monotonic()
                web.proc.send_signal(signal.SIGTERM)
                for _ in lines:  # the server ends the stream
                    pass
            again = client.get(f"/runs/{run.id}")  # the same kept-alive connection
        assert again.status_code == 503, again.text
        assert again.json()["error"]["code"] == "server_restarting"
        assert again.headers["Connection"] == "close"
        exits_soon(web, stopped)
    finally:
        stop_streaming(web, run)


def exits_soon(web: Gunicorn, stopped: float) -> None:
    """The web process exited cleanly well before gunicorn's 30 s graceful timeout."""
    assert web.proc.wait(15) == 0
    assert time.monotonic() - stopped < 10


def stop_streaming(web: Gunicorn, run) -> None:
    from tests.conftest import open_gate

    if web.proc.poll() is None:
        web.kill()
    open_gate(run, "streamer")
