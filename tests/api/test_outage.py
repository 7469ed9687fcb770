"""While Redis is down the web process answers 503 with Retry-After within its own short
budget (FLOWKIT_API_REDIS_RETRY_SECONDS), every endpoint, the WebSocket handshake and
/healthz included, whatever budget the workers have to ride out a restart."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import websocket

import flowkit
from flowkit.testing import LocalRedis, free_port
from tests.api.conftest import API_KEY
from tests.api.helpers import Gunicorn

API_BUDGET = 2.0  # the default FLOWKIT_API_REDIS_RETRY_SECONDS
#: What the answer may take beyond the budget (connection attempts, the server itself).
SLACK = 2.5


@pytest.fixture(scope="module")
def web_on_a_redis_that_stops(flowkit_env, tmp_path_factory):
    with LocalRedis() as redis_server:
        env = {**flowkit_env, "FLOWKIT_REDIS_URL": redis_server.url,
               "FLOWKIT_BROKER_URL": redis_server.url,
               "FLOWKIT_REDIS_RETRY_SECONDS": "30"}  # the workers' budget: not the API's
        log = tmp_path_factory.mktemp("outage") / "gunicorn.log"
        web = Gunicorn(env, log, FLOWKIT_API_KEYS=API_KEY).start()
        try:
            with httpx.Client(base_url=web.url, timeout=30,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                run = client.post("/workflows/simple/runs", json={"n": 1}).json()
                stream = websocket.create_connection(  # open before Redis stops
                    f"ws{web.url[4:]}/runs/{run['id']}/stream?token={run['token']}",
                    timeout=10)
                assert json.loads(stream.recv())["type"] == "run.queued"
                redis_server.stop()
                yield web, client, run, stream
        finally:
            web.stop()


def timed(call):
    began = time.monotonic()
    result = call()
    return result, time.monotonic() - began


@pytest.mark.parametrize("method, path", [
    ("GET", "/runs"), ("GET", "/runs/{id}"), ("GET", "/runs/{id}/events"),
    ("GET", "/runs/{id}/trace"), ("POST", "/workflows/simple/runs"),
    ("POST", "/runs/{id}/cancel"), ("GET", "/healthz"),
])
def test_every_endpoint_answers_503_with_retry_after_within_the_api_budget(
        web_on_a_redis_that_stops, method, path):
    _, client, run, _ = web_on_a_redis_that_stops
    response, took = timed(lambda: client.request(method, path.format(id=run["id"]),
                                                  json={"n": 1}))
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert took < API_BUDGET + SLACK


def test_the_websocket_handshake_answers_503_within_the_api_budget(web_on_a_redis_that_stops):
    web, _, run, _ = web_on_a_redis_that_stops
    url = f"ws{web.url[4:]}/runs/{run['id']}/stream?token={run['token']}"
    began = time.monotonic()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(url, timeout=10)
    assert refused.value.status_code == 503
    assert time.monotonic() - began < API_BUDGET + SLACK


def test_a_resume_sent_on_an_open_websocket_while_redis_is_down_keeps_the_socket(
        web_on_a_redis_that_stops):
    """The resume's check of the cursor reads Redis: its StoreUnavailable was answered as an
    HTTP 503 written into the open socket, which the client read as a broken frame."""
    *_, stream = web_on_a_redis_that_stops
    stream.send(json.dumps({"resume": "1-0"}))
    stream.send(json.dumps({"ping": 7}))
    assert json.loads(stream.recv()) == {"pong": 7}  # the relay goes on, still a WebSocket
    assert stream.connected


def test_a_start_while_the_broker_is_down_answers_503_naming_the_stored_run(
        flowkit_env, tmp_path):
    """Its message was "flowkit's Redis is unavailable" with Redis up; the run is stored,
    so the answer says not to start it again."""
    env = {**flowkit_env, "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    web = Gunicorn(env, tmp_path / "gunicorn.log", FLOWKIT_API_KEYS=API_KEY).start()
    try:
        with httpx.Client(base_url=web.url, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            response, took = timed(lambda: client.post("/workflows/simple/runs",
                                                       json={"n": 1}))
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "broker_unavailable"
            assert int(response.headers["Retry-After"]) > 0
            run_id = error["message"].split("Run ")[1].split(" ")[0]
            assert error["message"] == (
                "flowkit's Celery broker is unavailable; retry shortly. Run "
                f"{run_id} is stored: the reaper sends it once the broker is back; do not "
                "start it again.")
            assert client.get(f"/runs/{run_id}").json()["state"] == "queued"
            assert took < API_BUDGET + SLACK
    finally:
        web.stop()


def test_followers_that_asked_are_told_when_the_relay_cannot_read_redis_and_when_it_can(
        flowkit_env, tmp_path):
    """An open run page said "live" through a Redis outage: the socket stayed open and
    answered pings. With ``?status=true`` the WebSocket and SSE say so, without an id."""
    with LocalRedis() as redis_server:
        env = {**flowkit_env, "FLOWKIT_REDIS_URL": redis_server.url,
               "FLOWKIT_BROKER_URL": redis_server.url}
        web = Gunicorn(env, tmp_path / "gunicorn.log", FLOWKIT_API_KEYS=API_KEY).start()
        try:
            with httpx.Client(base_url=web.url, timeout=30,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                run = client.post("/workflows/simple/runs", json={"n": 1}).json()  # no worker
                stream = websocket.create_connection(
                    f"ws{web.url[4:]}/runs/{run['id']}/stream?status=true&token={run['token']}",
                    timeout=20)
                assert json.loads(stream.recv())["type"] == "run.queued"
                with client.stream("GET", f"/runs/{run['id']}/events?status=true",
                                   headers={"Accept": "text/event-stream"}) as sse:
                    blocks = sse_blocks(sse.iter_lines())
                    assert next(blocks)[0] is not None  # run.queued, with its id
                    redis_server.stop()
                    degraded = json.loads(stream.recv())
                    assert degraded["status"] == "degraded" and "id" not in degraded
                    assert degraded["reason"] == "store_unavailable"
                    assert degraded["message"].startswith("The server cannot read")
                    assert next(blocks) == (None, "status", degraded)
                    redis_server.start()
                    assert json.loads(stream.recv()) == {"status": "live"}
                    assert next(blocks) == (None, "status", {"status": "live"})
                stream.close()
        finally:
            web.stop()


def sse_blocks(lines):
    """(id, event name, data) of each SSE message, pings skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(": ")
            if name:  # not a ": ping" comment
                fields[name] = value
        elif fields:
            yield fields.get("id"), fields.get("event"), json.loads(fields["data"])
            fields = {}


def test_answers_and_events_taken_while_the_broker_is_down_resume_their_runs_once_it_is_back(
        flowkit_env, tmp_path, worker, store):
    """The waits were answered in Redis but the resumes could not be sent: the API answered
    503 "retry shortly", and the resend found the input taken ("same") and the event's
    waits gone from its index, and sent nothing; an event's runs not reached before the
    failure were never woken. Each answer is delivered now, its resume owed, and beat's
    sweep sends it once the broker is back: no restart, no run left waiting."""
    from flowkit.engine import reaper
    from tests import workflows as wf
    from tests.test_waits import paused

    payers = [wf.payment.start({"order": 31}) for _ in range(3)]
    asker = wf.approval.start({"n": 1})
    for run in [*payers, asker]:
        paused(run)
    env = {**flowkit_env, "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"}
    web = Gunicorn(env, tmp_path / "gunicorn.log", FLOWKIT_API_KEYS=API_KEY).start()
    try:
        with httpx.Client(base_url=web.url, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"}) as client:
            sent = client.post("/events/payment:31", json={"amount": 5})
            assert sent.status_code == 202 and sent.json() == {"woken": 3}, sent.text
            answered = client.post(f"/runs/{asker.id}/input/approval", json={"ok": True})
            assert answered.status_code == 202, answered.text
            assert answered.json()["outcome"] == "resumed"
    finally:
        web.stop()
    assert sorted(reaper.sweep()["resumed"]) == sorted(r.id for r in [*payers, asker])
    assert [r.result(20)["paid"] for r in payers] == [{"amount": 5}] * 3
    assert asker.result(20) == {"n": 1, "approved": True}
    assert [flowkit.get_run(r.id).restarts for r in [*payers, asker]] == [0] * 4
    assert reaper.sweep()["resumed"] == []  # each sent once
