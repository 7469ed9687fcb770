"""A page of another site cannot change runs or open their streams (flowkit/api/origins.py).

The open API (FLOWKIT_API_OPEN) and a host app's cookie session let in any request a
browser makes, whichever site's page made it: a form or a no-cors ``fetch`` could start,
cancel or answer runs, and a WebSocket (no CORS) could read a run's stream.
"""

from __future__ import annotations

import re
import socket
import threading

import httpx
import pytest
import websocket
from flask import Flask
from werkzeug.serving import make_server

import flowkit
from flowkit.api.options import ApiOptions
from flowkit.errors import ConfigError
from tests.api.conftest import make_app, serve
from tests.api.helpers import start, ws_connect, ws_read
from tests.api.test_watch import browser  # noqa: F401 - the Chromium fixture
from tests.test_waits import paused

EVIL = "https://evil.example"
TRUSTED = "https://app.example.com"


@pytest.fixture(scope="module")
def open_api(flowkit_env, worker):
    yield from serve(make_app(keys=[], open=True, trusted_origins=TRUSTED))


def runs_of(workflow: str) -> int:
    return len(flowkit.list_runs(workflow=workflow, limit=1000))


def refused(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "cross_site"
    return response.json()["error"]["message"]


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},
    {"Origin": "null"},  # a sandboxed iframe, a file:// page
    {"Sec-Fetch-Site": "cross-site"},  # a browser that sent no Origin
], ids=["origin", "null-origin", "sec-fetch-site"])
def test_another_sites_page_cannot_start_a_run(open_api, store, headers):
    with httpx.Client(base_url=open_api.url, headers=headers) as page:
        message = refused(page.post("/workflows/simple/runs", json={"n": 1}))
    assert "FLOWKIT_API_TRUSTED_ORIGINS" in message
    assert runs_of("simple") == 0


def test_another_sites_page_cannot_cancel_or_answer_a_run(open_api, store):
    run = flowkit.get_workflow("approval").start({"n": 1})
    paused(run)
    with httpx.Client(base_url=open_api.url, headers={"Origin": EVIL}) as page:
        refused(page.post(f"/runs/{run.id}/cancel"))
        refused(page.post(f"/runs/{run.id}/input/approval", json={"ok": True}))
        refused(page.delete("/schedules/any"))
        assert page.get(f"/runs/{run.id}").status_code == 200  # reads: no CORS, no answer
    assert run.refresh().state == "waiting"
    flowkit.cancel(run.id)


def test_its_own_origin_a_trusted_one_and_clients_that_are_not_browsers_may(open_api, store):
    for headers in ({"Origin": open_api.url, "Sec-Fetch-Site": "same-origin"},
                    {"Origin": TRUSTED.upper()}, {"Sec-Fetch-Site": "same-site"}, {}):
        with httpx.Client(base_url=open_api.url, headers=headers) as client:
            assert client.post("/workflows/simple/runs", json={"n": 1}).status_code == 202
    assert runs_of("simple") == 4


def test_a_websocket_from_another_site_is_refused_at_the_handshake(open_api, store):
    run = start(httpx.Client(base_url=open_api.url), "simple", {"n": 1}, params={"wait": 10})
    url = f"{open_api.ws_url}/runs/{run['id']}/stream"
    with pytest.raises(websocket.WebSocketBadStatusException) as refusal:
        websocket.create_connection(url, timeout=20, origin=EVIL)
    assert refusal.value.status_code == 403
    own = websocket.create_connection(url, timeout=20, origin=open_api.url)
    assert ws_read(own)[-1]["type"] == "run.succeeded"
    assert ws_read(ws_connect(url))[-1]["type"] == "run.succeeded"  # no Origin: not a browser


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          None])
def test_a_body_that_does_not_say_it_is_json_is_415(open_api, store, content_type):
    """What an HTML form sends: it could start runs while json_body ignored the type."""
    headers = {"Content-Type": content_type} if content_type else {}
    with httpx.Client(base_url=open_api.url) as client:
        response = client.post("/workflows/simple/runs", content=b'{"n": 1}', headers=headers)
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert "'Content-Type: application/json'" in response.json()["error"]["message"]
    assert runs_of("simple") == 0


def test_the_open_api_answers_loopback_host_names_only(open_api, store):
    """DNS rebinding: a page of rebind.example, its name pointed at 127.0.0.1, is
    same-origin with the local open API under that name."""
    port = open_api.url.rpartition(":")[2]
    rebound = f"http://rebind.example:{port}"
    with httpx.Client(base_url=open_api.url, headers={"Host": f"rebind.example:{port}",
                                                       "Origin": rebound}) as page:
        response = page.post("/workflows/simple/runs", json={"n": 1})
        assert response.status_code == 403
        assert "not to 'rebind.example'" in response.json()["error"]["message"]
        assert page.get("/runs").status_code == 403
    assert runs_of("simple") == 0
    for host in (f"localhost:{port}", f"[::1]:{port}", "app.example.com"):  # the last: trusted
        with httpx.Client(base_url=open_api.url, headers={"Host": host}) as local:
            assert local.get("/runs").status_code == 200, host


@pytest.mark.parametrize("host", ["localhost:abc", "[::1"])
def test_a_host_header_the_server_cannot_read_is_refused_naming_it(open_api, store, host):
    """The refusal named the host as '' (werkzeug reads such a Host as none)."""
    with httpx.Client(base_url=open_api.url, headers={"Host": host}) as client:
        response = client.get("/runs")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        f"FLOWKIT_API_OPEN answers requests to localhost, 127.0.0.1 or [::1] only, and this "
        f"one's Host header, {host!r}, names no host it can read; send a Host such as "
        "localhost:8000, or use an API key (FLOWKIT_API_KEYS).")


def _network_address() -> str:
    """This machine's address on its network (no packet is sent: a UDP socket's route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            pytest.skip("this machine has no network address but loopback")
        return probe.getsockname()[0]


def test_the_open_api_refuses_a_loopback_host_name_sent_from_another_address(flowkit_env,
                                                                             worker, store):
    """Served on every interface (the packaged gunicorn config's 0.0.0.0), the open API
    took `Host: localhost` from any client of the network, which may write any Host."""
    address = _network_address()
    for served in serve(make_app(keys=[], open=True), host=address):
        port = served.url.rpartition(":")[2]
        with httpx.Client(base_url=served.url, headers={"Host": f"localhost:{port}"}) as spoof:
            response = spoof.get("/runs")
            assert response.status_code == 403
            assert response.json()["error"]["message"] == (
                f"FLOWKIT_API_OPEN answers connections from this machine only, not from "
                f"{address}; use an API key (FLOWKIT_API_KEYS).")
            assert spoof.post("/workflows/simple/runs", json={"n": 1}).status_code == 403
    assert runs_of("simple") == 0


@pytest.mark.parametrize("peer, local", [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),  # a dual-stack bind's
    ("", True), (None, True),  # a unix socket: no address, this machine's by nature
    ("192.0.2.2", False), ("::ffff:192.0.2.2", False), ("not-an-address", False),
])
def test_what_counts_as_a_connection_from_this_machine(peer, local):
    from flowkit.api.origins import _local_peer

    assert _local_peer(peer) is local


@pytest.mark.parametrize("origin", ["app.example.com", "https://u@app.example.com",
                                    "https://app.example.com/path", "https://app.example.com?x=1"])
def test_a_trusted_origin_that_is_not_one_says_its_form(origin):
    app = Flask("bad-origins")
    with pytest.raises(ConfigError, match=rf"{re.escape(repr(origin))} is not an origin; write "
                                          r"scheme://host\[:port\]"):
        flowkit.FlowKit(app, keys=["k"], trusted_origins=origin)


def test_a_trusted_origin_is_written_as_browsers_send_it():
    options = ApiOptions.resolve({}, trusted_origins="https://App.Example.com:443/, "
                                                     "http://b.example:80,http://c.example:8080")
    assert options.trusted_origins == (
        "https://app.example.com", "http://b.example", "http://c.example:8080")


def test_a_key_or_run_token_is_no_page_of_another_sites(flowkit_env, worker, store):
    """A page of another site holds neither: the host app's own pages elsewhere may use
    them (it grants CORS itself), while its cookie session is refused there."""
    for served in serve(make_app(authorize=lambda request: bool(request.cookies.get("s")))):
        with served.client(headers={"Origin": EVIL}) as keyed:
            run = start(keyed, "simple", {"n": 1}, params={"wait": 10})
        with served.client(key=run["token"], headers={"Origin": EVIL}) as page:
            # past the cross-site check: what a run token may not do is another refusal
            assert page.post(f"/runs/{run['id']}/retry").json()["error"]["code"] == "forbidden"
            assert page.get(f"/runs/{run['id']}").status_code == 200
        url = f"{served.ws_url}/runs/{run['id']}/stream?token={run['token']}"
        assert ws_read(websocket.create_connection(url, timeout=20, origin=EVIL))
        with served.client(key=None, headers={"Origin": EVIL, "Cookie": "s=1"}) as cookie:
            refused(cookie.post("/workflows/simple/runs", json={"n": 1}))


# -- in a real browser -----------------------------------------------------------------------

ATTACK = """async ([api, runId]) => {
  const sent = await fetch(api + "/workflows/simple/runs", {
    method: "POST", mode: "no-cors", credentials: "include",
    headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ n: 1 }),
  }).then(() => "sent", (e) => String(e));
  const socket = await new Promise((resolve) => {
    const ws = new WebSocket(api.replace("http", "ws") + "/runs/" + runId + "/stream");
    ws.onmessage = () => { resolve("read an event"); ws.close(); };
    ws.onerror = () => resolve("refused");
  });
  return [sent, socket];
}"""


@pytest.fixture(scope="module")
def other_site():
    """A page of another origin (another port: another host for Origin)."""
    app = Flask("other-site")
    app.get("/")(lambda: "<!doctype html><title>other site</title>")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()


def test_in_a_browser_another_sites_page_neither_starts_nor_reads_runs(
    open_api, store, other_site, browser,  # noqa: F811
):
    run = start(httpx.Client(base_url=open_api.url), "simple", {"n": 1}, params={"wait": 10})
    before = runs_of("simple")
    page = browser.new_page()
    page.goto(other_site)
    assert page.evaluate(ATTACK, [open_api.url, run["id"]]) == ["sent", "refused"]
    assert runs_of("simple") == before
    page.close()


READ_WITH_A_TOKEN = """async ([api, runId, token]) => {
  const response = await fetch(api + "/runs/" + runId, {
    headers: { Authorization: "Bearer " + token },
  }).catch((e) => String(e));
  return typeof response === "string" ? response : [response.status, (await response.json()).id];
}"""


def test_in_a_browser_the_apps_page_on_another_origin_reads_a_run_with_its_token(
    flowkit_env, worker, store, other_site, browser,  # noqa: F811
):
    """The CORS preflight a bearer header makes the browser send carries no credentials:
    it was a 401, so no page elsewhere could use a key or a run token, CORS granted or not."""
    from flask_cors import CORS

    app = make_app()
    CORS(app, origins=[other_site])  # the CORS the host app grants its own pages
    for served in serve(app):
        with served.client() as keyed:
            run = start(keyed, "simple", {"n": 1}, params={"wait": 10})
        preflight = httpx.options(f"{served.url}/runs/{run['id']}", headers={
            "Origin": other_site, "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200 and preflight.content == b""
        page = browser.new_page()
        page.goto(other_site)
        assert page.evaluate(READ_WITH_A_TOKEN, [served.url, run["id"], run["token"]]) == [
            200, run["id"]]
        page.close()
