"""Streams one caller may hold open in a web process (flowkit/api/quota.py).

Each stream holds a server thread: a run token given to a browser, or an owner-scoped
caller, opened as many as the process had threads, and every other caller of every
tenant went unanswered. API keys are the operator's own and are not counted.
"""

from __future__ import annotations

import functools
import os
import resource
import socket

import httpx
import pytest
import websocket

import flowkit
from flowkit.api.stalls import hung_up
from tests.api.conftest import make_app, serve
from tests.api.helpers import start, ws_connect
from tests.conftest import wait_until
from tests.test_waits import paused

LIMIT = 2


@pytest.fixture(scope="module")
def served(flowkit_env, worker):
    yield from serve(make_app(streams_per_caller=LIMIT,
                              authorize=lambda request: request.headers.get("X-User")))


def waiting_run(client: httpx.Client) -> dict:
    run = start(client, "approval", {"n": 1})
    paused(flowkit.get_run(run["id"]))
    return run


def too_many(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == "5"
    error = response.json()["error"]
    assert error["code"] == "too_many_streams"
    assert "FLOWKIT_API_STREAMS_PER_CALLER" in error["message"]


def test_a_run_tokens_streams_are_bounded_and_a_closed_one_makes_room(served, store):
    with served.client() as keyed:
        run = waiting_run(keyed)
    url, token = f"{served.ws_url}/runs/{run['id']}/stream", run["token"]
    held = [ws_connect(url, token=token) for _ in range(LIMIT)]
    hub = served.app.extensions["flowkit"].hub
    # a socket takes its place once its handshake is answered: a handshake checked before
    # then passes, and is closed with 1013 once the quota is found full
    wait_until(lambda: hub.quota.held(f"run:{run['id']}") == LIMIT, 10, "the streams to count")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(url, token=token)  # a plain HTTP answer at the handshake
    assert refused.value.status_code == 429
    with served.client(key=token) as page:
        too_many(page.get(f"/runs/{run['id']}/events", params={"after": "0"},
                          headers={"Accept": "text/event-stream"}))
        assert page.get(f"/runs/{run['id']}").status_code == 200  # reads are not streams
    with served.client() as keyed:  # an API key's streams are not counted
        keys = [ws_connect(url, key=keyed.headers["Authorization"].split()[1])
                for _ in range(LIMIT + 1)]
    held.pop().close()
    wait_until(lambda: hub.quota.held(f"run:{run['id']}") == LIMIT - 1, 10, "the stream's end")
    held.append(ws_connect(url, token=token))
    for sock in held + keys:
        sock.close()
    flowkit.cancel(run["id"])


def test_an_owners_streams_and_waits_count_together_across_its_runs(served, store):
    with served.client(key=None, headers={"X-User": "alice"}) as alice:
        runs = [waiting_run(alice) for _ in range(LIMIT)]
        streams = [alice.stream("GET", f"/runs/{run['id']}/events",
                                headers={"Accept": "text/event-stream"}) for run in runs]
        for s in streams:
            assert s.__enter__().status_code == 200
        before = len(flowkit.list_runs(workflow="simple", limit=1000))
        too_many(alice.post("/workflows/simple/runs", params={"wait": 5}, json={"n": 1}))
        assert len(flowkit.list_runs(workflow="simple", limit=1000)) == before  # none started
        assert alice.post("/workflows/simple/runs", json={"n": 1}).status_code == 202
        with served.client(key=None, headers={"X-User": "bob"}) as bob:  # another owner
            other = waiting_run(bob)
            with bob.stream("GET", f"/runs/{other['id']}/events",
                            headers={"Accept": "text/event-stream"}) as response:
                assert response.status_code == 200
        for s in streams:
            s.__exit__(None, None, None)
    for run in [*runs, other]:
        flowkit.cancel(run["id"])


def _stalled_follower(url: str, run: dict, websocket_: bool) -> socket.socket:
    """A client that opens the run's stream and then reads nothing more (a frozen tab),
    its kernel acknowledging all the while: nothing ever times it out by itself."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    path = f"/runs/{run['id']}/{'stream' if websocket_ else 'events'}?token={run['token']}"
    upgrade = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n") if websocket_ else \
        "Accept: text/event-stream\r\n"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{upgrade}\r\n".encode())
    assert sock.recv(12).split()[-1] in (b"101", b"200")
    return sock


@pytest.mark.parametrize("websocket_", [True, False], ids=["websocket", "sse"])
def test_a_follower_that_reads_nothing_is_let_go_and_gives_its_stream_back(
        flowkit_env, worker, websocket_):
    """Its write blocked for ever: the thread, the subscription and the token's stream stayed
    held after the run ended (32 of them, and the run's own viewers were refused 429). A
    write the peer takes nothing of for two ping intervals now ends the stream."""
    for served in serve(make_app(streams_per_caller=1, ping_interval=0.5)):
        with served.client() as client:
            run = start(client, "bulky_output", {"chunks": 200, "size": 50_000})
            flowkit.get_run(run["id"]).wait(30)
            before_the_end = flowkit.history(run["id"])[-2].id
            stalled = _stalled_follower(served.url, run, websocket_)
            try:
                with served.client(key=run["token"]) as viewer:
                    last = functools.partial(viewer.get, f"/runs/{run['id']}/events",
                                             headers={"Accept": "text/event-stream"},
                                             params={"after": before_the_end})
                    assert last().status_code == 429  # held by the stalled follower meanwhile
                    # the token's one stream is free again
                    wait_until(lambda: last().status_code == 200, 20,  # noqa: B023 - one pass
                               "the stalled follower to be let go")
            finally:
                stalled.close()


@pytest.fixture(scope="module")
def slow_pings(flowkit_env, worker):
    """Pings 60 s apart: a stream whose client left learns it only at its second ping."""
    yield from serve(make_app(streams_per_caller=LIMIT, ping_interval=60,
                              authorize=lambda request: request.headers.get("X-User")))


def test_streams_whose_clients_hung_up_give_their_slots_back_at_once(slow_pings, store):
    """An SSE stream learned its client had gone at its second ping after (40 s by default),
    and a ?wait= start when its wait ran out: a page reloaded a few times locked the run's
    viewers out (429), and a tenant whose clients gave up on their waits every stream."""
    with slow_pings.client() as keyed:
        run = waiting_run(keyed)
    for _ in range(LIMIT + 2):  # opened and dropped, as a reload does
        _stalled_follower(slow_pings.url, run, websocket_=False).close()
    with slow_pings.client(key=run["token"]) as page, page.stream(
            "GET", f"/runs/{run['id']}/events", params={"after": "0"},
            headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
    with slow_pings.client() as keyed:  # a WebSocket's handshake too (it checked the quota
        other = waiting_run(keyed)      # alone): another run, its quota full of hung-up SSE
    for _ in range(LIMIT):
        _gone_after_reading(slow_pings.url, other)
    hub = slow_pings.app.extensions["flowkit"].hub
    assert hub.quota.held(f"run:{other['id']}") == LIMIT  # idle till their pings: held
    ws_connect(f"{slow_pings.ws_url}/runs/{other['id']}/stream", token=other["token"]).close()
    with httpx.Client(base_url=slow_pings.url, headers={"X-User": "carol"}, timeout=0.5) as carol:
        for _ in range(LIMIT):  # clients that give up on their waits
            with pytest.raises(httpx.ReadTimeout):
                carol.post("/workflows/approval/runs", params={"wait": 60}, json={"n": 1})
    with slow_pings.client(key=None, headers={"X-User": "carol"}) as carol:
        started = carol.post("/workflows/simple/runs", params={"wait": 20}, json={"n": 1})
        assert started.status_code == 200, started.text  # it ran to its end, not 429
    for waiting in flowkit.list_runs(workflow="approval", state="waiting", limit=100):
        flowkit.cancel(waiting.id)  # carol's, and the run followed


def _gone_after_reading(url: str, run: dict) -> None:
    """A page that read the run's stream up to its wait, then went (a reload): nothing is
    left unread, so its close is a plain one the server does not see until it writes."""
    sock = _stalled_follower(url, run, websocket_=False)
    seen = b""
    while b"run.waiting" not in seen:
        seen += sock.recv(65536)
    sock.close()


def test_hung_up_tells_a_gone_client_from_a_live_one_at_any_descriptor():
    """select() refuses a descriptor of 1024 or more (ValueError), which read as gone: a
    busy process ended its callers' live streams once their quota filled."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= HIGH_FD:
        pytest.skip(f"this process may not open descriptor {HIGH_FD} (ulimit -n)")
    ours, theirs = socket.socketpair()
    high = socket.socket(fileno=os.dup2(ours.fileno(), HIGH_FD))
    try:
        assert not hung_up(high)  # there, saying nothing: a follower between events
        high.settimeout(30)  # a socket with a timeout: its peek waited that long
        assert not hung_up(high)
        theirs.close()
        assert hung_up(high)
    finally:
        high.close()
        ours.close()


HIGH_FD = 1500
