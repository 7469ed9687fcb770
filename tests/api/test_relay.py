"""The relay's fan-out: a slow WebSocket client holds back no one, a client that leaves
is let go at once, and the hub's shortcuts (no decoding of chunks, frames built by hand)
keep the wire format and the end of a stream exactly as before."""

from __future__ import annotations

import json
import socket

import pytest
import websocket
from wsproto.frame_protocol import FrameProtocol

import flowkit
from flowkit import history
from flowkit.api.relay import Hub, RelayEvent
from flowkit.api.ws import plain_frame
from flowkit.config import get_settings
from flowkit.store import Store
from flowkit.testing import LocalRedis
from tests.api.conftest import make_app, serve
from tests.api.helpers import start, ws_connect, ws_read
from tests.conftest import open_gate, reached_gate, wait_until

#: Enough bytes to fill a loopback socket's send buffer (autotuned up to 4 MiB) and more.
FLOOD_EVENTS, FLOOD_CHUNK = 3000, 2048


def flood(store, run_id: str) -> None:
    """Append events to a live run's stream as fast as Redis takes them, as a step would."""
    key = store.keys.events(run_id)
    for start_at in range(0, FLOOD_EVENTS, 500):
        pipe = store.redis.pipeline(transaction=False)
        for i in range(start_at, start_at + 500):
            event = {"type": "step.output", "ts": 0, "run": run_id, "step": "0:t.streamer",
                     "attempt": 1, "chunk": f"{i:06d}" + "x" * FLOOD_CHUNK}
            pipe.xadd(key, {"e": json.dumps(event)})
        pipe.execute()


@pytest.mark.long  # mostly waiting (5-9 s): beside the rest (scripts/test)
def test_a_client_that_stops_reading_holds_back_no_other_and_still_gets_everything(
        flowkit_env, worker, store):
    """Its socket stops taking frames (the hub hands it to its own thread), then its buffer
    of 100 events overflows (it catches up from Redis): the other client is served live."""
    for api in serve(make_app(subscriber_buffer=100)):
        with api.client() as client:
            run = start(client, "streaming", {"before": 0, "after": 5})
        follow_while_another_stalls(api, run, store)


def follow_while_another_stalls(api, run: dict, store) -> None:
    handle = flowkit.get_run(run["id"])
    url = f"{api.ws_url}/runs/{run['id']}/stream?token={run['token']}"
    reached_gate(handle, "streamer")
    # The slow client reads nothing until the end, through a tiny receive buffer: the
    # hub's writes to it stop being taken after a few frames.
    slow = websocket.create_connection(
        url, timeout=20, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    fast = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    first = ws_read(fast, stop=lambda got: got[-1]["type"] == "step.started")
    flood(store, run["id"])
    flooded = ws_read(fast, stop=lambda got: len(got) == FLOOD_EVENTS)  # times out if held back
    assert [e["chunk"][:6] for e in flooded] == [f"{i:06d}" for i in range(FLOOD_EVENTS)]
    open_gate(handle, "streamer")
    seen_fast = first + flooded + ws_read(fast)
    seen_slow = ws_read(slow)  # its buffered frames, then what it catches up from Redis
    expected = [e.id for e in history(run["id"])]
    assert [e["id"] for e in seen_fast] == expected
    assert [e["id"] for e in seen_slow] == expected  # no gap, no duplicate
    assert seen_slow[-1]["type"] == "run.succeeded"


def test_a_client_that_leaves_a_quiet_run_is_unsubscribed_at_once(api, client):
    """The client's thread sleeps while its run is quiet; its leaving wakes it (no poll)."""
    run = start(client, "streaming", {"before": 0, "after": 1})
    handle = flowkit.get_run(run["id"])
    reached_gate(handle, "streamer")
    hub = api.app.extensions["flowkit"].hub
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    ws_read(sock, stop=lambda got: got[-1]["type"] == "step.started")
    assert hub.subscribers(run["id"]) == 1  # this run's: other tests' streams come and go
    sock.close()
    # well under the client thread's safety poll (30 s)
    wait_until(lambda: hub.subscribers(run["id"]) == 0, timeout=5, message="the hub letting go")
    open_gate(handle, "streamer")


def test_messages_that_arrive_together_are_all_read(api, client):
    """Two messages in one TCP write ring the client's thread once: it reads both, so the
    resume in the second is served (not left until the thread's safety poll)."""
    run = start(client, "streaming", {"before": 5, "after": 1})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    before_gate = ws_read(sock, stop=lambda got: sum(e["type"] == "step.output" for e in got) == 5)
    reached_gate(handle, "streamer")
    frames = [websocket.ABNF.create_frame(text, websocket.ABNF.OPCODE_TEXT).format()
              for text in ("hello", json.dumps({"resume": before_gate[0]["id"]}))]
    sock.sock.sendall(b"".join(frames))
    sock.settimeout(5)  # the thread's safety poll is 30 s: only the doorbell answers in time
    replayed = ws_read(sock, stop=lambda got: len(got) == len(before_gate) - 1)
    assert replayed == before_gate[1:]
    open_gate(handle, "streamer")
    ws_read(sock)


def test_the_hub_follows_its_runs_again_after_redis_restarts():
    """The hub's reader holds one connection of its own: a restart of Redis breaks it, and
    the next read reconnects and goes on from the hub's cursor (nothing lost, nothing twice)."""
    with LocalRedis(appendonly=True) as server:
        store = Store(get_settings().replace(redis_url=server.url))
        hub = Hub(lambda: store, page=100, buffer=1000)
        key = store.keys.events("01RELAYRESTART")

        def append(n: int) -> str:
            return store.redis.xadd(key, {"e": json.dumps({"type": "step.output", "chunk": n})})

        first = append(0)
        sub = hub.subscribe("01RELAYRESTART")
        try:
            assert [e.id for e in sub.next_batch(timeout=10)] == [first]  # the history
            second = append(1)
            assert [e.id for e in sub.next_batch(timeout=10)] == [second]  # live, from the hub
            server.restart()
            third = append(2)
            assert [e.id for e in sub.next_batch(timeout=20)] == [third]
        finally:
            sub.close()
            hub.stop()


def test_only_an_event_of_a_terminal_type_is_terminal():
    chunk_naming_one = '{"type":"step.output","chunk":"then run.succeeded, said the model"}'
    assert not RelayEvent("1-1", chunk_naming_one).terminal
    assert not RelayEvent("1-2", '{"type":"run.started"}').terminal
    # the type need not come first (a Lua script's cjson orders keys as it likes)
    assert RelayEvent("1-3", '{"output":{"n":1},"type":"run.succeeded"}').terminal
    assert RelayEvent("1-4", '{"type": "run.failed", "error": "x"}').terminal
    assert RelayEvent("1-5", '{"type":"run.cancelled"}').json == '{"id":"1-5","type":"run.cancelled"}'


def test_frames_are_the_same_bytes_as_wsproto_builds_for_every_length_encoding():
    for size in (0, 100, 125, 126, 1000, 65535, 65536, 200_000):
        event = RelayEvent("7-0", json.dumps({"type": "step.output", "chunk": "é" * size}))
        expected = FrameProtocol(client=False, extensions=[]).send_data(event.json, fin=True)
        assert plain_frame(event) == bytes(expected)


def test_a_subscriber_that_asked_is_told_when_the_hub_cannot_read_redis_and_when_it_can():
    """While Redis is down the hub's reads fail and the stream is silent: a page showed
    "live" all along. A subscriber that asked (``?status=true``) is woken at each change."""
    with LocalRedis(appendonly=True) as server:
        store = Store(get_settings().replace(redis_url=server.url))
        hub = Hub(lambda: store, page=100, buffer=1000)
        key = store.keys.events("01RELAYOUTAGE")
        first = store.redis.xadd(key, {"e": json.dumps({"type": "step.output", "chunk": 0})})
        told, silent = hub.subscribe("01RELAYOUTAGE"), hub.subscribe("01RELAYOUTAGE")
        told.wants_status = True
        try:
            assert [e.id for e in told.next_batch(timeout=10)] == [first]
            assert told.status() is None  # nothing to tell while the hub reads
            server.stop()
            assert told.next_batch(timeout=20) == []  # the hub's poke, not the timeout
            degraded = told.status()
            assert degraded["status"] == "degraded" and degraded["reason"] == "store_unavailable"
            assert told.status() is None  # told once
            server.start()
            assert told.next_batch(timeout=20) == []
            assert told.status() == {"status": "live"}
            again = store.redis.xadd(key, {"e": json.dumps({"type": "step.output", "chunk": 1})})
            assert [e.id for e in told.next_batch(timeout=20)] == [again]
            # one that did not ask gets its events as before (the transports ask it nothing)
            assert [e.id for e in silent.next_batch(timeout=10)] == [first, again]
        finally:
            told.close()
            silent.close()
            hub.stop()


def test_a_subscriber_whose_history_read_meets_redis_down_waits_for_it_and_is_told():
    """Its first read (the history after its cursor) raised StoreUnavailable in the
    client's thread: the socket closed and the page said "reconnecting" through the outage
    instead of "delayed" (a fresh-clone run stopped Redis just after the page connected)."""
    with LocalRedis(appendonly=True) as server:
        # the API's budget (FLOWKIT_API_REDIS_RETRY_SECONDS): its reads give up in seconds
        store = Store(get_settings().replace(redis_url=server.url, redis_retry_seconds=2))
        hub = Hub(lambda: store, page=100, buffer=1000)
        key = store.keys.events("01RELAYCATCHUP")
        first = store.redis.xadd(key, {"e": json.dumps({"type": "step.output", "chunk": 0})})
        sub = hub.subscribe("01RELAYCATCHUP")  # its history is not read yet
        sub.wants_status = True
        try:
            server.stop()
            assert sub.next_batch(timeout=20) == []  # the hub's poke: no exception
            assert sub.status()["status"] == "degraded"
            server.start()
            assert [e.id for e in sub.next_batch(timeout=20)] == [first]  # read again
        finally:
            sub.close()
            hub.stop()
