"""Live streams over WebSocket and SSE: history then the live tail, resumable, gapless."""

from __future__ import annotations

import json
import threading

import httpx_sse
import pytest
import websocket

import flowkit
import flowkit.engine.control
from flowkit import history
from flowkit.errors import ValidationError
from flowkit.events import cursor_order
from tests.api.conftest import API_KEY
from tests.api.helpers import TERMINAL, sse_read, start, ws_connect, ws_read
from tests.conftest import open_gate, reached_gate, wait_until
from tests.test_waits import paused


def full_history(run_id: str) -> list[str]:
    return [e.id for e in history(run_id)]


def chunks(events: list[dict]) -> list[str]:
    return [e["chunk"] for e in events if e["type"] == "step.output"]


def test_websocket_resume_after_a_disconnect_is_gapless_and_duplicate_free(api, client):
    run = start(client, "streaming", {"before": 20, "after": 3000})
    handle = flowkit.get_run(run["id"])
    url = f"{api.ws_url}/runs/{run['id']}/stream"

    first = ws_connect(url, token=run["token"])
    seen = ws_read(first, stop=lambda got: len(chunks(got)) == 20)  # read up to the gate
    first.close()
    reached_gate(handle, "streamer")
    open_gate(handle, "streamer")  # the run goes on while nobody listens

    second = ws_connect(url, token=run["token"], after=seen[-1]["id"])
    # leave again in the middle of the live tail
    seen += ws_read(second, stop=lambda got: len(chunks(got)) >= 500)
    second.close()
    third = ws_connect(url, token=run["token"], after=seen[-1]["id"])
    seen += ws_read(third)

    assert seen[-1]["type"] == "run.succeeded"
    ids = [e["id"] for e in seen]
    assert ids == full_history(run["id"])  # exactly the history: no gap, no duplicate, in order
    assert chunks(seen) == [f"a{i}" for i in range(20)] + [f"b{i}" for i in range(3000)]


def test_websocket_client_can_send_a_resume_message(api, client):
    run = start(client, "streaming", {"before": 5, "after": 5})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", key=API_KEY)
    before_gate = ws_read(sock, stop=lambda got: len(chunks(got)) == 5)
    reached_gate(handle, "streamer")  # nothing new is emitted while the step waits here
    sock.send(json.dumps({"resume": before_gate[1]["id"]}))  # "serve me again from there"
    replayed = ws_read(sock, stop=lambda got: len(got) == len(before_gate) - 2)
    assert replayed == before_gate[2:]
    open_gate(handle, "streamer")
    rest = ws_read(sock)
    assert [e["id"] for e in before_gate + rest] == full_history(run["id"])


def test_a_client_message_over_64_kib_closes_the_socket_with_1009(api, client):
    """What a client sends is a resume or a ping: a bigger message is refused (close 1009,
    "message too big") instead of being held, or echoed back as a pong."""
    run = start(client, "streaming", {"before": 1, "after": 1})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    ws_read(sock, stop=lambda got: len(chunks(got)) == 1)
    reached_gate(handle, "streamer")
    sock.send(json.dumps({"ping": "x" * 100_000}))
    opcode, data = sock.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1009
    open_gate(handle, "streamer")


def test_a_websocket_ping_message_is_answered_with_its_pong(api, client):
    """A browser cannot see protocol pings: its client sends ``{"ping": n}`` and takes the
    ``{"pong": n}`` as proof that the connection still carries data."""
    run = start(client, "streaming", {"before": 2, "after": 2})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    before_gate = ws_read(sock, stop=lambda got: len(chunks(got)) == 2)
    reached_gate(handle, "streamer")  # nothing is emitted while the step waits here
    sock.send(json.dumps({"ping": 7}))
    assert json.loads(sock.recv()) == {"pong": 7}
    sock.send(json.dumps({"ping": "x", "resume": before_gate[-2]["id"]}))  # both at once
    assert json.loads(sock.recv()) == {"pong": "x"}
    assert json.loads(sock.recv()) == before_gate[-1]  # served again from the cursor
    open_gate(handle, "streamer")
    rest = ws_read(sock)
    assert [e["id"] for e in before_gate + rest] == full_history(run["id"])


def test_a_ping_of_nan_or_infinity_is_ignored_not_echoed(api, client):
    """``{"pong": NaN}`` was sent back: a frame a browser's ``JSON.parse`` refuses, where
    every other part of the API refuses NaN and Infinity (1e400 reads as Infinity)."""
    run = start(client, "streaming", {"before": 1, "after": 1})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    ws_read(sock, stop=lambda got: len(chunks(got)) == 1)
    reached_gate(handle, "streamer")
    for message in ['{"ping": NaN}', '{"ping": [1e400]}', '{"ping": -Infinity}', '{"ping": 8}']:
        sock.send(message)
    assert json.loads(sock.recv()) == {"pong": 8}  # the first answer is to the last ping
    open_gate(handle, "streamer")
    ws_read(sock)


def test_sse_resume_with_last_event_id_is_gapless(api, client):
    run = start(client, "streaming", {"before": 10, "after": 2000})
    handle = flowkit.get_run(run["id"])
    path = f"/runs/{run['id']}/events"
    sse = {"Accept": "text/event-stream"}

    seen = sse_read(client, path, sse, stop=lambda got: len(chunks(got)) == 10)
    reached_gate(handle, "streamer")
    open_gate(handle, "streamer")
    seen += sse_read(client, path, {**sse, "Last-Event-ID": seen[-1]["id"]},
                     stop=lambda got: len(chunks(got)) >= 300)
    seen += sse_read(client, f"{path}?after={seen[-1]['id']}", sse)  # the query cursor works too

    assert seen[-1]["type"] == "run.succeeded"
    assert [e["id"] for e in seen] == full_history(run["id"])


def test_streams_of_a_finished_run_replay_history_then_close(api, client):
    run = start(client, "chatty", {"n": 1})
    flowkit.get_run(run["id"]).wait(20)
    via_sse = sse_read(client, f"/runs/{run['id']}/events", {"Accept": "text/event-stream"})
    via_ws = ws_read(ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", key=API_KEY))
    assert [e["id"] for e in via_sse] == [e["id"] for e in via_ws] == full_history(run["id"])
    assert via_ws[-1]["type"] in TERMINAL


def test_sse_resumed_from_an_ended_run_s_last_event_is_204_so_eventsource_stops(api, client):
    """It was a 200 with an empty body, which a browser's EventSource takes for a dropped
    connection: it reconnected every ~3 s for as long as the page stayed open."""
    run = start(client, "chatty", {"n": 1})
    flowkit.get_run(run["id"]).wait(20)
    last = full_history(run["id"])[-1]
    path = f"/runs/{run['id']}/events"
    for headers, url in (({"Last-Event-ID": last}, path), ({}, f"{path}?after={last}")):
        ended = client.get(url, headers={"Accept": "text/event-stream", **headers})
        assert ended.status_code == 204 and ended.content == b"", ended.text
    page = client.get(f"{path}?after={last}")  # a JSON page says so its own way
    assert page.status_code == 200 and page.json()["done"] is True


def test_post_with_accept_ndjson_streams_the_run(client):
    with client.stream("POST", "/workflows/chatty/runs", json={"n": 2},
                       headers={"Accept": "application/x-ndjson"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        run_id = response.headers["X-Flowkit-Run"]
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert lines[0]["type"] == "run.queued" and lines[-1]["type"] == "run.succeeded"
    assert [e["id"] for e in lines] == full_history(run_id)
    assert chunks(lines) == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("accept", ["text/event-stream", "text/event-stream; charset=utf-8",
                                    "Text/Event-Stream;q=0.9, application/json;q=0.5"])
def test_post_with_accept_event_stream_streams_sse(client, accept):
    """Named with a parameter, it got the JSON page (werkzeug matches a type with
    parameters only to the same parameters)."""
    with client.stream("POST", "/workflows/chatty/runs", json={"n": 2},
                       headers={"Accept": accept}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    data = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert data[-1]["type"] == "run.succeeded" and chunks(data) == ["alpha", "beta", "gamma"]


def test_sync_invocation_returns_the_output_of_a_run_taking_seconds(client):
    response = client.post("/workflows/napping/runs?wait=20", json={"seconds": 2})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "succeeded"
    assert response.json()["output"] == {"slept": 2.0}
    assert response.headers["Preference-Applied"] == "wait=20"


def test_sync_invocation_that_runs_out_answers_202_with_urls(client):
    response = client.post("/workflows/napping/runs", json={"seconds": 3},
                           headers={"Prefer": "wait=0.5"})
    assert response.status_code == 202
    run = response.json()
    assert run["state"] in ("queued", "running") and run["urls"]["self"] == f"/runs/{run['id']}"
    assert flowkit.get_run(run["id"]).wait(20).state == "succeeded"


@pytest.mark.parametrize("prefer", ["wait=abc", "wait=-1", "wait=nan", "wait=1e400",
                                    "wait=90000", "respond-async, wait=1_0"])
def test_a_prefer_wait_that_is_no_number_of_seconds_is_a_400_as_the_openapi_says(client, prefer):
    """It was ignored (the run started, 202) or read in part (1e400 held the request 1 s)."""
    response = client.post("/workflows/simple/runs", json={"n": 1}, headers={"Prefer": prefer})
    assert response.status_code == 400, response.text
    [said] = response.json()["error"]["fields"]["Prefer"]
    assert said.endswith("is not a number of seconds from 0 to 86400 (e.g. Prefer: wait=10).")
    assert flowkit.list_runs(workflow="simple") == []  # nothing started


def test_a_replay_held_by_a_wait_says_it_created_nothing(client):
    """A start repeated with its Idempotency-Key and ?wait= said "created": true (202 while
    the run went on), as if it had started a second run."""
    headers = {"Idempotency-Key": "replayed-with-a-wait"}
    first = client.post("/workflows/simple/runs", json={"n": 1}, headers=headers)
    again = client.post("/workflows/simple/runs?wait=5", json={"n": 1}, headers=headers)
    assert first.json()["created"] is True
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["id"] == first.json()["id"]


def test_many_subscribers_of_one_run_each_get_every_event(api, client):
    run = start(client, "streaming", {"before": 0, "after": 200})
    handle = flowkit.get_run(run["id"])
    url = f"{api.ws_url}/runs/{run['id']}/stream"
    socks = [ws_connect(url, token=run["token"]) for _ in range(20)]
    reached_gate(handle, "streamer")
    open_gate(handle, "streamer")
    expected = None
    for sock in socks:
        ids = [e["id"] for e in ws_read(sock)]
        expected = expected or full_history(run["id"])
        assert ids == expected
    # all unsubscribed, each before its closing frame was sent (other tests' streams, ended
    # by their clients, may still be on their way out: only this run's are counted)
    assert api.app.extensions["flowkit"].hub.subscribers(run["id"]) == 0


def test_streams_of_a_run_deleted_while_followed_end_saying_so(flowkit_env, worker, store):
    """A waiting run whose retention ran out (or that was deleted) is a 404 everywhere, but
    its open streams pinged on for ever: an API key's never ended."""
    from tests.api.conftest import make_app, serve

    for served in serve(make_app(ping_interval=0.3)):
        with served.client() as c:
            follow_a_run_deleted(served, c, store)


def follow_a_run_deleted(served, c, store) -> None:
    run = start(c, "approval", {"n": 1})
    paused(flowkit.get_run(run["id"]))
    sock = ws_connect(f"{served.ws_url}/runs/{run['id']}/stream", token=run["token"])
    seen: list = []

    def follow() -> None:
        with httpx_sse.connect_sse(c, "GET", f"/runs/{run['id']}/events",
                                   headers={"Accept": "text/event-stream"}) as source:
            seen.extend((e.event, e.data) for e in source.iter_sse() if e.data)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    hub = served.app.extensions["flowkit"].hub
    wait_until(lambda: hub.subscribers(run["id"]) == 2, 20, "both streams to follow")
    store.redis.delete(store.keys.events(run["id"]), store.keys.run(run["id"]))
    assert c.get(f"/runs/{run['id']}").status_code == 404
    while True:  # the history, then the close
        opcode, data = sock.recv_data(control_frame=True)  # fails after 20 s
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            break
    assert int.from_bytes(data[:2], "big") == 4004
    assert data[2:].decode().startswith("not_found: This run no longer exists")
    sock.close()
    follower.join(20)
    assert not follower.is_alive(), "the SSE stream is still open"
    assert seen[-1][0] == "not_found" and "no longer exists" in seen[-1][1]


def test_an_idle_websocket_gets_keep_alive_pings(flowkit_env, worker, store):
    """A run that emits nothing for a while still pings its followers, so proxies keep the
    socket open."""
    import websocket

    from tests.api.conftest import make_app, serve

    for served in serve(make_app(ping_interval=0.3)):
        with served.client() as c:
            run = start(c, "streaming", {"before": 0, "after": 1})
        reached_gate(flowkit.get_run(run["id"]), "streamer")
        sock = ws_connect(f"{served.ws_url}/runs/{run['id']}/stream", token=run["token"])
        try:
            kinds = []
            while websocket.ABNF.OPCODE_PING not in kinds:
                opcode, _ = sock.recv_data(control_frame=True)  # times out (fails) after 20 s
                kinds.append(opcode)
            assert set(kinds) <= {websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_PING}
        finally:
            sock.close()
            open_gate(flowkit.get_run(run["id"]), "streamer")


def test_a_live_run_resumes_a_cursor_its_stream_lost_in_a_failover(api, client, store):
    """A Redis failover loses the tail of a stream (replication is asynchronous): clients
    come back with an id past the new end. A live run's events to come take later ids, so
    they are served from there (a 404 stopped every watch at once); a cursor ahead of the
    clock is still refused."""
    run = start(client, "approval", {"n": 1})
    handle = flowkit.get_run(run["id"])
    paused(handle)
    seen = full_history(run["id"])
    store.redis.xdel(store.keys.events(run["id"]), seen[-1])  # the tail the failover lost
    assert full_history(run["id"]) == seen[:-1]
    url = f"{api.ws_url}/runs/{run['id']}/stream"
    sock = ws_connect(url, token=run["token"], after=seen[-1])
    page = client.get(f"/runs/{run['id']}/events", params={"after": seen[-1]})
    assert page.status_code == 200 and page.json()["events"] == []
    with pytest.raises(ValidationError, match="past run"):  # ahead of the clock: a typo
        next(flowkit.engine.control.follow(run["id"], "99999999999999-0"))
    flowkit.send_input(run["id"], "approval", {"ok": True})
    got = ws_read(sock)
    sock.close()
    assert got[-1]["type"] == "run.succeeded"
    assert all(cursor_order(e["id"]) > cursor_order(seen[-1]) for e in got)
    assert [e["id"] for e in got] == full_history(run["id"])[len(seen) - 1:]


def test_a_stream_from_a_cursor_ahead_of_a_live_run_ends_when_the_run_ends(api, client):
    """A cursor a little ahead of a live run's last event (a failover's allowance) is served:
    the events to come take later ids. But when the run ended first, its final event fell at
    or before the cursor and was dropped as seen: the stream never ended (keep-alives only)."""
    run = start(client, "approval", {"n": 1})
    paused(flowkit.get_run(run["id"]))
    ms, _ = (int(x) for x in full_history(run["id"])[-1].split("-"))
    ahead = f"{ms + 20_000}-0"  # 20 s ahead: within the allowance
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"], after=ahead)
    sse = api.client()
    seen: list = []

    def follow() -> None:
        with httpx_sse.connect_sse(sse, "GET", f"/runs/{run['id']}/events", headers={
                "Accept": "text/event-stream", "Last-Event-ID": ahead}) as source:
            assert source.response.status_code == 200
            seen.extend(e.data for e in source.iter_sse() if e.data)
            seen.append("ended")

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    hub = api.app.extensions["flowkit"].hub  # both streams follow the run: now it may end
    wait_until(lambda: hub.subscribers(run["id"]) == 2, 20, "the SSE stream to subscribe")
    flowkit.send_input(run["id"], "approval", {"ok": True})
    assert ws_read(sock) == []  # closed (it timed out waiting, before)
    sock.close()
    follower.join(20)
    sse.close()
    assert seen == ["ended"]


def test_a_cursor_past_the_runs_events_is_refused_everywhere_instead_of_waiting_for_ever(
        api, client):
    """A typo, or another run's id: no stream of this run gave it, and a stream resumed
    there would wait for ids that far on long after the run ended."""
    run = start(client, "simple", {"n": 1}, params={"wait": 10})
    last = full_history(run["id"])[-1]
    ms, seq = (int(x) for x in last.split("-"))
    future = f"{ms + 10_000_000}-0"
    path = f"/runs/{run['id']}/events"
    for response in (
        client.get(path, params={"after": future}),
        client.get(path, params={"after": future}, headers={"Accept": "text/event-stream"}),
        client.get(path, headers={"Accept": "text/event-stream", "Last-Event-ID": future}),
    ):
        assert response.status_code == 404, response.text
        [message] = next(iter(response.json()["error"]["fields"].values()))
        assert f"its last event is {last}" in message
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"], after=future)
    assert refused.value.status_code == 404
    with pytest.raises(ValidationError, match="past run"):
        next(flowkit.engine.control.follow(run["id"], future))
    # at its last event: nothing more, and the page says the run's history is done
    page = client.get(path, params={"after": last}).json()
    assert page == {"events": [], "next": last, "done": True}
    assert client.get(path, headers={"Accept": "text/event-stream", "Last-Event-ID": last},
                      timeout=10).status_code == 204  # and SSE says no more will come


def test_a_resume_message_past_the_run_s_events_closes_the_socket_with_4004(api, client):
    """The handshake answers such a cursor 404; as a message it was served from there, and
    the socket waited for ever for ids that far on."""
    run = start(client, "streaming", {"before": 1, "after": 1})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    ws_read(sock, stop=lambda got: len(chunks(got)) == 1)
    reached_gate(handle, "streamer")
    sock.send(json.dumps({"resume": "99999999999999-0"}))
    opcode, data = sock.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 4004
    assert data[2:].decode().startswith("not_found: 99999999999999-0 is past the run's events")
    open_gate(handle, "streamer")
    assert handle.wait(20).state == "succeeded"


def test_a_client_message_nested_too_deeply_is_ignored_like_any_that_is_not_json(api, client):
    """``[[[...`` nested past Python's recursion limit (60 KB, under the message limit) broke
    the relay: a 500 written into the upgraded socket."""
    run = start(client, "streaming", {"before": 1, "after": 1})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    seen = ws_read(sock, stop=lambda got: len(chunks(got)) == 1)
    reached_gate(handle, "streamer")
    sock.send("[" * 60_000)
    sock.send(json.dumps({"ping": 1}))
    assert json.loads(sock.recv()) == {"pong": 1}  # the socket still serves
    open_gate(handle, "streamer")
    assert [e["id"] for e in seen + ws_read(sock)] == full_history(run["id"])


@pytest.mark.parametrize("cursor", ["abc", "", 0, "18446744073709551615-18446744073709551615"])
def test_a_resume_that_is_no_event_id_closes_the_socket_saying_so(api, client, cursor):
    """It was ignored (the client believed it resumed), or replayed the whole history (""),
    where the handshake and SSE answer the same cursor 400."""
    run = start(client, "approval", {"n": 1})
    paused(flowkit.get_run(run["id"]))
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    history = ws_read(sock, stop=lambda got: got[-1]["type"] == "run.waiting")
    sock.send(json.dumps({"resume": cursor}))
    opcode, data = sock.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE, (opcode, data)  # no replay before it
    assert int.from_bytes(data[:2], "big") == 1008
    assert data[2:].decode().startswith(f"validation_error: resume {json.dumps(cursor)} is not "
                                        "an event id"), data
    assert history and flowkit.cancel(run["id"]).state == "cancelled"


def test_resumes_sent_faster_than_the_allowance_close_the_socket_with_1008(api, client):
    """Each resume is a Redis read from its cursor: one socket sent 20,000 in 4 s."""
    from flowkit.api.ws import RESUME_BURST

    run = start(client, "streaming", {"before": 1, "after": 1})
    handle = flowkit.get_run(run["id"])
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"])
    seen = ws_read(sock, stop=lambda got: len(chunks(got)) == 1)
    reached_gate(handle, "streamer")
    for _ in range(RESUME_BURST * 3):
        sock.send(json.dumps({"resume": seen[0]["id"]}))
    while True:  # the replays the allowance served, then the close frame
        opcode, data = sock.recv_data(control_frame=True)
        if opcode != websocket.ABNF.OPCODE_TEXT:
            break
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert int.from_bytes(data[:2], "big") == 1008
    assert data[2:].decode().startswith("too_many_resumes: ")
    open_gate(handle, "streamer")
    assert handle.wait(20).state == "succeeded"
