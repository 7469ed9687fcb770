"""Credentials are required; run tokens read only their run; API keys work everywhere."""

from __future__ import annotations

import json
import time

import httpx
import httpx_sse
import pytest
import websocket
from flask import Flask

import flowkit
from flowkit.api.auth import STREAM_EXPIRED
from tests.api.conftest import make_app, serve
from tests.api.helpers import TERMINAL, start, ws_connect, ws_read
from tests.conftest import open_gate, reached_gate
from tests.test_waits import paused


@pytest.fixture(scope="module")
def callback_api(flowkit_env, worker):
    """An app authorising with its own callback: header X-Tenant names the caller's tenant."""

    def authorize(request):
        return request.headers.get("X-Tenant") or False

    yield from serve(make_app(keys=[], authorize=authorize))


def test_no_credentials_is_401_everywhere_but_healthz(api, store):
    anonymous = api.client(key=None)
    run = start(api.client(), "simple", {"n": 1})
    for method, path in [("GET", "/workflows"), ("POST", "/workflows/simple/runs"),
                         ("GET", "/runs"), ("GET", f"/runs/{run['id']}"),
                         ("GET", f"/runs/{run['id']}/events"), ("POST", f"/runs/{run['id']}/cancel"),
                         ("GET", "/openapi.json")]:
        response = anonymous.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.get("/healthz").status_code == 200
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(f"{api.ws_url}/runs/{run['id']}/stream")
    assert refused.value.status_code == 401


def test_wrong_key_is_401(api, store):
    assert api.client(key="not-a-key").get("/runs").status_code == 401


def test_run_token_reads_its_run_and_nothing_else(api, store):
    admin = api.client()
    a = start(admin, "chatty", {"n": 1})
    b = start(admin, "chatty", {"n": 2})
    flowkit.get_run(a["id"]).wait(20)
    as_a = api.client(key=a["token"])

    assert as_a.get(f"/runs/{a['id']}").json()["id"] == a["id"]
    assert as_a.get(f"/runs/{a['id']}/output").status_code == 200
    assert as_a.get(f"/runs/{a['id']}/events").status_code == 200
    assert api.client(key=None).get(f"/runs/{a['id']}", params={"token": a["token"]}).status_code == 200
    assert ws_read(ws_connect(f"{api.ws_url}/runs/{a['id']}/stream", token=a["token"]))

    # its id in lower case (ULIDs are case-insensitive) is the same run, to its token too
    lower = a["id"].lower()
    assert as_a.get(f"/runs/{lower}").json()["id"] == a["id"]
    assert ws_read(ws_connect(f"{api.ws_url}/runs/{lower}/stream", token=a["token"]))
    for path in (f"/runs/{b['id']}", f"/runs/{b['id']}/events", f"/runs/{b['id']}/output",
                 f"/runs/{b['id'].lower()}"):
        response = as_a.get(path)
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ws_connect(f"{api.ws_url}/runs/{b['id']}/stream", token=a["token"])
    assert refused.value.status_code == 403
    for method, path in [("GET", "/runs"), ("GET", "/workflows"),
                         ("POST", "/workflows/simple/runs"), ("POST", f"/runs/{a['id']}/cancel"),
                         ("POST", f"/runs/{a['id']}/retry")]:
        assert as_a.request(method, path, json={"n": 1}).status_code == 403, (method, path)
    # each refusal says which it is (one message for both hid it)
    assert as_a.get(f"/runs/{b['id']}").json()["error"]["message"] == (
        "This token is for another run: a run token reads its own run only.")
    assert as_a.post(f"/runs/{a['id']}/cancel").json()["error"]["message"].startswith(
        "A run token reads its run and answers its waits; cancelling or retrying it needs an "
        "API key")


def test_the_host_app_mints_run_tokens_for_runs_it_started(api, store):
    """A run started in Python (the app's own route) gets its token from FlowKit.run_token,
    which reads that run, streams it, and nothing else."""
    mine = flowkit.get_workflow("chatty").start({"n": 1})
    other = flowkit.get_workflow("chatty").start({"n": 2})
    with api.app.app_context():
        token = flowkit.FlowKit.run_token(mine.id)
    assert flowkit.FlowKit.run_token(mine.id, app=api.app) != ""
    mine.wait(20)
    as_page = api.client(key=token)
    assert as_page.get(f"/runs/{mine.id}").json()["id"] == mine.id
    assert ws_read(ws_connect(f"{api.ws_url}/runs/{mine.id}/stream", token=token))
    assert as_page.get(f"/runs/{other.id}").status_code == 403
    assert as_page.get("/runs").status_code == 403


def test_an_api_key_makes_a_run_token_for_a_page_s_websocket(api, store):
    """A socket carries its credential in its URL, where an API key must never go: the
    dashboard followed over SSE instead, one of the browser's 6 connections per tab."""
    admin = api.client()
    a = start(admin, "chatty", {"n": 1})
    b = start(admin, "chatty", {"n": 2})
    made = admin.post(f"/runs/{a['id']}/token")
    assert made.status_code == 200 and made.headers["Cache-Control"] == "no-store"
    body = made.json()
    assert body["run_id"] == a["id"] and body["token_expires_in"] == api.app.config.get(
        "FLOWKIT_API_TOKEN_TTL", 86400)
    assert ws_read(ws_connect(f"{api.ws_url}/runs/{a['id']}/stream", token=body["token"]))
    as_page = api.client(key=body["token"])
    assert as_page.get(f"/runs/{a['id']}").json()["id"] == a["id"]
    assert as_page.get(f"/runs/{b['id']}").status_code == 403
    # a run token may not make the next one: it would never expire
    again = as_page.post(f"/runs/{a['id']}/token")
    assert again.status_code == 403
    assert again.json()["error"]["message"].startswith("A run token cannot make another")
    unknown = admin.post(f"/runs/{b['id'][:-4]}ZZZZ/token")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert api.client(key=None).post(f"/runs/{a['id']}/token").status_code == 401


def test_an_owner_scoped_caller_makes_run_tokens_for_its_own_runs_only(callback_api, store):
    acme = callback_api.client(key=None, headers={"X-Tenant": "acme"})
    globex = callback_api.client(key=None, headers={"X-Tenant": "globex"})
    run = start(acme, "simple", {"n": 1})
    token = acme.post(f"/runs/{run['id']}/token").json()["token"]
    assert callback_api.client(key=token).get(f"/runs/{run['id']}").status_code == 200
    assert globex.post(f"/runs/{run['id']}/token").status_code == 404


def test_run_token_on_an_app_without_flowkit_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"call FlowKit\(app\) first"):
        flowkit.FlowKit.run_token("r-1", app=Flask("bare"))


def a_month_old_token(run_id: str, secret: str = "s3cret") -> str:
    """A run token as an app with ``secret`` made it a month ago (past its TTL)."""
    from itsdangerous import TimestampSigner, URLSafeTimedSerializer

    from flowkit.api.auth import _TOKEN_SALT

    class AMonthAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 30 * 86400

    return URLSafeTimedSerializer(secret, salt=_TOKEN_SALT, signer=AMonthAgo).dumps(
        {"run": run_id})


def test_expired_run_token_is_401(flowkit_env, worker, store):
    for served in serve(make_app(token_ttl=60, secret="s3cret")):
        run = start(served.client(), "simple", {"n": 1})
        response = served.client(key=a_month_old_token(run["id"])).get(f"/runs/{run['id']}")
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "token_expired"


@pytest.mark.long  # mostly waiting for a token's expiry: beside the rest
def test_a_stream_opened_with_a_run_token_ends_when_the_token_expires(flowkit_env, worker, store):
    """A token stops reading at its expiry, not when its connection happens to drop: the
    socket closes with 4001 and SSE ends with ``event: token_expired`` while the run still
    waits at its gate; a stream opened with an API key goes on to the run's end."""
    for served in serve(make_app(token_ttl=2)):
        admin = served.client()
        run = start(admin, "chain3", {"n": 1})
        handle = flowkit.get_run(run["id"])
        reached_gate(handle, "gated")
        keyed = ws_connect(f"{served.ws_url}/runs/{run['id']}/stream", key="test-api-key")
        # minted now, not at start: how long the run took to reach its gate must not eat
        # into the token's 2 s (1 s lasted 1.05 s from a token signed at X.95)
        token = served.app.extensions["flowkit"].auth.issue(run["id"])
        by_token = ws_connect(f"{served.ws_url}/runs/{run['id']}/stream", token=token)
        got = []
        while True:
            opcode, data = by_token.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            if opcode == websocket.ABNF.OPCODE_TEXT:
                got.append(json.loads(data))
        assert int.from_bytes(data[:2], "big") == 4001
        assert b"token_expired" in data[2:]
        assert got and not any(e["type"] in TERMINAL for e in got)  # the run goes on

        fresh = served.app.extensions["flowkit"].auth.issue(run["id"])
        with httpx_sse.connect_sse(served.client(key=fresh), "GET",
                                   f"/runs/{run['id']}/events") as source:
            *before, last = [sse for sse in source.iter_sse() if sse.data]
        assert before and all(sse.event == "message" for sse in before)
        # no id of its own: a reconnection resumes after the last event
        assert last.event == "token_expired" and last.id == before[-1].id
        assert json.loads(last.data)["error"] == {  # the API's error shape, as a 401's
            "code": "token_expired", "message": STREAM_EXPIRED, "fields": {}}
        assert served.client(key=fresh).get(f"/runs/{run['id']}").status_code == 401

        open_gate(handle, "gated")
        assert ws_read(keyed)[-1]["type"] == "run.succeeded"


def test_a_token_signed_by_another_secret_is_refused(api, store):
    other = Flask("other")
    other.config["FLOWKIT_API_SECRET"] = "another-secret"
    flowkit.FlowKit(other, keys=["x"])
    run = start(api.client(), "simple", {"n": 1})
    forged = other.extensions["flowkit"].auth.issue(run["id"])
    assert api.client(key=forged).get(f"/runs/{run['id']}").status_code == 401


def test_api_key_works_everywhere(api, client):
    run = start(client, "chain3", {"n": 1})
    for path in ("/workflows", "/runs", f"/runs/{run['id']}", f"/runs/{run['id']}/events",
                 f"/runs/{run['id']}/trace", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    sock = ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", key="test-api-key")
    assert client.post(f"/runs/{run['id']}/cancel").status_code == 200
    assert ws_read(sock)[-1]["type"] == "run.cancelled"
    open_gate(flowkit.get_run(run["id"]), "gated")  # free the worker's slot (and its shutdown)


def test_authorize_callback_scopes_callers_to_their_own_runs(callback_api, store):
    acme = callback_api.client(key=None, headers={"X-Tenant": "acme"})
    globex = callback_api.client(key=None, headers={"X-Tenant": "globex"})
    run = start(acme, "simple", {"n": 1})
    assert flowkit.get_run(run["id"]).owner == "acme"
    assert acme.get(f"/runs/{run['id']}").status_code == 200
    assert [r["id"] for r in acme.get("/runs").json()["runs"]] == [run["id"]]
    assert globex.get("/runs").json()["runs"] == []
    # asking for another owner's runs is an empty list, not a way around the scope
    assert globex.get("/runs", params={"owner": "acme"}).json()["runs"] == []
    assert [r["id"] for r in acme.get("/runs", params={"owner": "acme"}).json()["runs"]] \
        == [run["id"]]
    assert callback_api.client(key=None).get("/runs").status_code == 401


def test_another_owners_run_is_not_found_as_a_missing_one_is(callback_api, store):
    """A 403 ("belongs to another owner") told a tenant which ids of other tenants' runs
    exist, where a missing one was a 404."""
    acme = callback_api.client(key=None, headers={"X-Tenant": "acme"})
    globex = callback_api.client(key=None, headers={"X-Tenant": "globex"})
    run = start(acme, "simple", {"n": 1})
    missing = "01" + run["id"][2:-4] + ("AAAA" if not run["id"].endswith("AAAA") else "BBBB")
    for method, path in [("GET", "/runs/{}"), ("GET", "/runs/{}/output"),
                         ("GET", "/runs/{}/trace"), ("GET", "/runs/{}/events"),
                         ("POST", "/runs/{}/cancel"), ("POST", "/runs/{}/retry"),
                         ("POST", "/runs/{}/input/approval")]:
        theirs = globex.request(method, path.format(run["id"]), json={})
        absent = globex.request(method, path.format(missing), json={})
        assert theirs.status_code == absent.status_code == 404, (path, theirs.text)
        said = theirs.json()["error"]["message"].replace(run["id"], missing)
        assert said == absent.json()["error"]["message"], path
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"{callback_api.ws_url}/runs/{run['id']}/stream",
                                    timeout=20, header=["X-Tenant: globex"])
    assert refused.value.status_code == 404
    assert acme.get(f"/runs/{run['id']}").status_code == 200
    assert flowkit.get_run(run["id"]).state != "cancelled"


def test_a_run_token_is_refused_other_runs_alike_whether_they_exist_or_not(api, client):
    run = start(client, "simple", {"n": 1})
    other = start(client, "simple", {"n": 2})
    as_page = api.client(key=run["token"])
    missing = "01" + other["id"][2:-4] + ("AAAA" if not other["id"].endswith("AAAA") else "BBBB")
    for rid in (other["id"], missing, missing.lower()):
        refused = as_page.get(f"/runs/{rid}")
        assert refused.status_code == 403, refused.text
        assert "This token is for another run" in refused.json()["error"]["message"]
    assert as_page.get(f"/runs/{run['id'].lower()}").status_code == 200  # its own, any case


def test_an_idempotency_key_is_each_owners_own(callback_api, store):
    """Another owner's same key used to answer 403, or 409 naming the first owner's run."""
    acme = callback_api.client(key=None, headers={"X-Tenant": "acme", "Idempotency-Key": "k1"})
    globex = callback_api.client(key=None, headers={"X-Tenant": "globex",
                                                     "Idempotency-Key": "k1"})
    first = acme.post("/workflows/simple/runs", json={"n": 1})
    assert first.status_code == 202
    theirs = globex.post("/workflows/simple/runs", json={"n": 2})
    assert theirs.status_code == 202, theirs.text
    assert theirs.json()["id"] != first.json()["id"]
    assert flowkit.get_run(theirs.json()["id"]).owner == "globex"
    again = acme.post("/workflows/simple/runs", json={"n": 1})
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
    conflict = globex.post("/workflows/simple/runs", json={"n": 3})
    assert conflict.status_code == 409
    assert theirs.json()["id"] in conflict.json()["error"]["message"]
    assert first.json()["id"] not in conflict.json()["error"]["message"]


def test_an_owner_scoped_caller_is_refused_what_reaches_across_owners(callback_api, store):
    """Schedules (owner-less runs), events (they wake every owner's waits), workers (every
    owner's steps) and metrics: 403 to a tenant; its own runs stay open to it."""
    acme = callback_api.client(key=None, headers={"X-Tenant": "acme"})
    waiting = flowkit.get_workflow("payment").start({"order": "scoped-1"}, owner="globex")
    paused(waiting)
    flowkit.schedules.create("simple", every=3600, input={"n": 1}, id="scoped-sched")
    try:
        for method, path in [
            ("GET", "/schedules"), ("POST", "/schedules"),
            ("GET", "/schedules/scoped-sched"), ("DELETE", "/schedules/scoped-sched"),
            ("POST", "/schedules/scoped-sched/pause"), ("POST", "/schedules/scoped-sched/resume"),
            ("POST", "/events/payment:scoped-1"), ("GET", "/workers"), ("GET", "/metrics"),
        ]:
            response = acme.request(method, path, json={"workflow": "simple", "every": 60,
                                                        "amount": 1})
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"]["code"] == "forbidden"
            assert "not scoped to an owner" in response.json()["error"]["message"]
        assert flowkit.schedules.get("scoped-sched")["paused"] is False
        assert flowkit.get_run(waiting.id).state == "waiting"
        assert acme.get("/workflows").status_code == 200
        assert acme.get("/openapi.json").status_code == 200
    finally:
        flowkit.schedules.delete("scoped-sched")
        flowkit.cancel(waiting.id)


def test_an_authorize_answer_other_than_true_or_an_owner_grants_nothing(
        flowkit_env, worker, store, caplog):
    """Only ``True`` grants everything: a truthy user object or ``1`` fails closed."""
    for served in serve(make_app(keys=[], authorize=lambda request: 1)):
        with caplog.at_level("ERROR", logger="flowkit.api.auth"):
            refused = served.client(key=None).get("/runs")
        assert refused.status_code == 401
        assert "the authorize callback returned a value of type int" in caplog.text
        assert served.client(key=None).get("/schedules").status_code == 401


def test_open_setting_lets_anyone_in(flowkit_env, worker, store):
    for served in serve(make_app(keys=[], open=True)):
        with httpx.Client(base_url=served.url) as anonymous:
            assert anonymous.get("/workflows").status_code == 200
            assert anonymous.post("/workflows/simple/runs", json={"n": 1}).status_code == 202


# -- the 401's message fits the auth in use ------------------------------------------------

REFUSED = "The host app's authorization refused this request"
SEND_KEY = "send 'Authorization: Bearer <API key>'"


def _refusal(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="flowkit"'
    return response.json()["error"]["message"]


@pytest.fixture(scope="module")
def keys_and_callback_api(flowkit_env, worker):
    """API keys and a callback: header X-Tenant names the caller's tenant."""

    def authorize(request):
        return request.headers.get("X-Tenant") or False

    yield from serve(make_app(authorize=authorize))


def test_401_with_api_keys_only_asks_for_an_api_key(api):
    assert _refusal(api.client(key=None).get("/runs")) == f"Credentials required: {SEND_KEY}."
    assert _refusal(api.client(key="not-a-key").get("/runs")) == "Invalid API key or run token."
    assert _refusal(api.client(key=None).get("/runs", params={"token": "not-a-token"})) == (
        "Invalid API key or run token.")


def test_401_of_a_server_without_api_keys_asks_for_a_run_token(flowkit_env, worker, store):
    """A Procfile web started without FLOWKIT_API_KEYS refused everything, saying only to
    send a key no one had; a server that only hands out run tokens must not tell its
    callers to set keys either."""
    for served in serve(make_app(keys=[])):
        assert _refusal(served.client(key=None).get("/runs")) == (
            "Credentials required: send a run token ('Authorization: Bearer <run token>' or "
            "'?token=<run token>'); this server has no API keys (set FLOWKIT_API_KEYS where "
            "it runs to use them).")


def test_a_random_signing_secret_is_told_when_a_token_is_made_not_at_import(caplog):
    """Every CLI command, worker and beat importing an app's package said it, though none
    makes a token; the web process that does said it once at its start, lost in its log."""
    app = Flask("no-secret")
    flowkit.FlowKit(app, keys=[])
    assert "random secret" not in caplog.text
    flowkit.FlowKit.run_token("r-1", app=app)
    flowkit.FlowKit.run_token("r-2", app=app)
    assert caplog.text.count("signed with a random secret") == 1


def test_401_with_an_authorize_callback_says_the_host_app_refused(callback_api):
    assert _refusal(callback_api.client(key=None).get("/runs")) == f"{REFUSED}."
    assert _refusal(callback_api.client(key="not-a-token").get("/runs")) == (
        f"{REFUSED}, and the token sent is not a valid run token.")
    assert _refusal(callback_api.client(key=None).get("/runs", params={"token": "x"})) == (
        f"{REFUSED}, and the token sent is not a valid run token.")
    assert callback_api.client(key=None, headers={"X-Tenant": "acme"}).get("/runs").status_code == 200


def test_401_with_a_callback_and_api_keys_says_an_api_key_also_works(keys_and_callback_api):
    served = keys_and_callback_api
    assert _refusal(served.client(key=None).get("/runs")) == (
        f"{REFUSED}; an API key also works: {SEND_KEY}.")
    assert _refusal(served.client(key="not-a-key").get("/runs")) == (
        f"{REFUSED}, and the token sent is not a valid API key or run token.")
    assert served.client().get("/runs").status_code == 200
    assert served.client(key=None, headers={"X-Tenant": "acme"}).get("/runs").status_code == 200


def test_an_expired_run_token_keeps_its_message_with_a_callback(flowkit_env, worker, store):
    def authorize(request):
        return request.headers.get("X-Tenant") or False

    for served in serve(make_app(keys=[], authorize=authorize, secret="s3cret")):
        run = start(served.client(key=None, headers={"X-Tenant": "acme"}), "simple", {"n": 1})
        response = served.client(key=a_month_old_token(run["id"])).get(f"/runs/{run['id']}")
        assert response.status_code == 401
        assert response.json()["error"] == {
            "code": "token_expired", "message": "This run token has expired.", "fields": {}}


def test_the_authorize_callback_can_answer_with_its_own_message(flowkit_env, worker):
    from flowkit.api.errors import ApiError

    def authorize(request):
        if request.headers.get("X-Banned"):
            raise ApiError(403, "suspended", "This account is suspended.")
        if not request.headers.get("X-Session"):
            raise ApiError(401, "login_required", "Sign in at /login first.")
        return True

    for served in serve(make_app(keys=[], authorize=authorize)):
        anonymous = served.client(key=None).get("/runs")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "login_required"
        assert anonymous.json()["error"]["message"] == "Sign in at /login first."
        assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="flowkit"'
        banned = served.client(key=None, headers={"X-Banned": "1"}).get("/runs")
        assert banned.status_code == 403
        assert banned.json()["error"] == {
            "code": "suspended", "message": "This account is suspended.", "fields": {}}
        assert "WWW-Authenticate" not in banned.headers
        assert served.client(key=None, headers={"X-Session": "s"}).get("/runs").status_code == 200


def test_a_preflight_of_a_run_s_stream_reads_no_run(api, client):
    """A CORS preflight (OPTIONS, no credentials) with a WebSocket's headers reached the
    stream's handshake check: it read the run without credentials (a 404 for a missing one
    told which ids existed), and since that check reads the caller first, it was a 500."""
    run = start(client, "simple", {"n": 1})
    anonymous = api.client(key=None)
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    answers = [anonymous.options(f"/runs/{rid}/stream", headers=headers)
               for rid in (run["id"], "0")]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].headers["Allow"] == answers[1].headers["Allow"]
