"""The OpenAPI document, and schemathesis testing the real server against it with every check."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
import schemathesis
from marshmallow import fields
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import events as st_events
from schemathesis.specs.openapi.definitions import OPENAPI_30

import flowkit
import flowkit.workflow
from flowkit.api.openapi import build_spec
from tests import workflows
from tests.api.conftest import API_KEY, make_app, serve
from tests.api.helpers import start

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Workflows whose runs stay cheap whatever input the fuzzer invents: two with a required
#: field, one without an input schema (any JSON body, an empty one included).
FUZZED = ["simple", "chatty", "looping"]
#: Fixed, so a failure reproduces; change it to explore other inputs.
SEED = 20240601
BODY, PATH, QUERY, HEADER, COOKIE = (ParameterLocation.BODY, ParameterLocation.PATH,
                                     ParameterLocation.QUERY, ParameterLocation.HEADER,
                                     ParameterLocation.COOKIE)


@pytest.fixture(scope="module")
def fuzzed_api(flowkit_env, worker):
    yield from serve(make_app(workflows=FUZZED, max_wait=0.5, max_page_size=50))


def test_request_bodies_come_from_each_workflows_input_schema(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    body = doc["paths"]["/workflows/simple/runs"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["properties"]["n"]["type"] == "integer" and schema["required"] == ["n"]
    for path in ("/runs", "/runs/{run_id}", "/runs/{run_id}/events", "/runs/{run_id}/stream",
                 "/runs/{run_id}/cancel", "/runs/{run_id}/retry", "/runs/{run_id}/output",
                 "/runs/{run_id}/trace", "/runs/{run_id}/watch", "/workflows", "/healthz", "/metrics",
                 "/openapi.json"):
        assert path in doc["paths"], path


def test_the_document_is_valid_openapi_3_0(client):
    # the OpenAPI 3.0 schema schemathesis checks documents with
    validator = jsonschema_rs.Draft4Validator(OPENAPI_30)
    docs = [client.get("/openapi.json").json()]
    # open (no credentials needed) and under a URL prefix
    app = make_app(keys=[], open=True, url_prefix="/api", workflows=["simple", "looping"])
    with app.app_context():
        docs.append(build_spec(app.extensions["flowkit"]))
    app.extensions["flowkit"].hub.stop()
    for doc in docs:
        assert [str(error) for error in validator.iter_errors(doc)] == []
    assert docs[1]["security"] == [{"bearer": []}, {}]
    assert "/api/workflows/simple/runs" in docs[1]["paths"]


def test_a_request_body_is_required_when_the_input_schema_requires_a_field(client):
    doc = client.get("/openapi.json").json()

    def body(workflow: str) -> dict:
        return doc["paths"][f"/workflows/{workflow}/runs"]["post"]["requestBody"]

    # "napping" requires `seconds`, "simple" requires `n`: without a body the input is {} (400)
    assert body("napping")["required"] is True and body("simple")["required"] is True
    assert client.post("/workflows/napping/runs").status_code == 400
    # "streaming" has defaults only, "looping" no input schema: {} is a valid input
    assert body("streaming")["required"] is False and body("looping")["required"] is False
    assert body("looping")["content"]["application/json"]["schema"] == {}
    assert client.post("/workflows/looping/runs").status_code == 202


def test_responses_document_their_errors_headers_and_streams(client):
    doc = client.get("/openapi.json").json()
    start_op = doc["paths"]["/workflows/simple/runs"]["post"]
    assert {"200", "202", "400", "401", "403", "409", "413", "503"} <= set(start_op["responses"])
    ok = start_op["responses"]["200"]
    assert {"application/json", "text/event-stream", "application/x-ndjson"} <= set(ok["content"])
    assert {"Location", "X-Flowkit-Run", "X-Flowkit-Token"} <= set(ok["headers"])
    unauthorized = doc["components"]["responses"]["Error401"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    assert "Retry-After" in doc["components"]["responses"]["Error503"]["headers"]
    stream = doc["paths"]["/runs/{run_id}/stream"]["get"]
    assert "101" in stream["responses"]
    assert {p["name"] for p in stream["parameters"] if p["in"] == "header" and p["required"]} == {
        "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version"}
    run_token = doc["components"]["securitySchemes"]["runToken"]
    assert (run_token["type"], run_token["in"], run_token["name"]) == ("apiKey", "query", "token")
    assert doc["paths"]["/runs/{run_id}"]["get"]["security"] == [{"bearer": []}, {"runToken": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == [{}, {"bearer": []}]  # optional
    # statuses these answer that the document left out: a declared schedule's id (409),
    # Redis away (503)
    assert "409" in doc["paths"]["/schedules"]["post"]["responses"]
    assert "503" in doc["paths"]["/runs/summary"]["get"]["responses"]
    assert "503" in doc["paths"]["/workers"]["get"]["responses"]


# -- schemathesis ---------------------------------------------------------------------
# What `st run --checks all --mode all --phases examples,coverage,fuzzing,stateful` does,
# in this process, against the served document: valid and invalid data, every check,
# at most 12 cases per operation and mode (and 6 steps per stateful scenario).

#: The run endpoints schemathesis calls with real run ids too. Not GET /runs/{run_id}/stream:
#: a WebSocket handshake that succeeds (101) hands its connection over to the socket, and
#: schemathesis' HTTP client would send its next request on it (and read WebSocket frames);
#: so the stream is fuzzed with invented ids only (404s, and 400s for a plain GET), and its
#: handshake with a real run is checked against the document below.
_RUN_PATHS = r"^/runs/\{run_id\}(/(output|events|trace|cancel|retry|watch))?$"


def _config(run_ids: list[str]) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "headers": AUTH,
        "cache": {"enabled": False},  # no state carried between runs (nor files written)
        "workers": 1,
        "generation": {"mode": "all", "max-examples": 12, "database": "none"},
        "checks": {"enabled": True},  # every check schemathesis has
        "phases": {
            "examples": {"enabled": True}, "coverage": {"enabled": True},
            "fuzzing": {"enabled": True}, "stateful": {"enabled": True, "max-steps": 6},
        },
        "dictionaries": {"runs": {"values": run_ids}},
        "operations": [
            # Half the run ids are real runs (the other half invented: 404s), so the run
            # endpoints answer with records, outputs, events, conflicts too.
            {"include-path-regex": _RUN_PATHS,
             "parameters": {"path.run_id": {"dictionary": "runs", "probability": 0.5}}},
            # Never given a real run id (see _RUN_PATHS): not a target of the stateful
            # phase's links, and not fed ids seen in responses.
            {"include-operation-id": "streamRun", "phases": {
                "stateful": {"enabled": False},
                **{phase: {"extra-data-sources": {"responses": False}}
                   for phase in ("examples", "coverage", "fuzzing")}}},
        ],
    })


def _run(schema) -> tuple[list[str], int]:
    """Every failure and error of a schemathesis run, and how many cases it sent."""
    failures: list[str] = []
    cases = 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, st_events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failures.append(
                        f"[{event.phase.value}] {check.name}: {check.failure_info.failure}"
                        f"\n    {check.failure_info.code_sample}")
        elif isinstance(event, (st_events.NonFatalError, st_events.FatalError)):
            failures.append(f"error: {event}")
        elif isinstance(event, st_events.EngineFinished):
            failures.extend(f"[after run] {failure}" for failure in event.failures)
    return failures, cases


@pytest.mark.long  # a fuzzing run of its own, about 20 s: beside the rest (scripts/test)
def test_schemathesis_finds_no_failure_with_every_check(fuzzed_api, store):
    """Every operation of the served /openapi.json, with an API key: examples, coverage,
    fuzzing and stateful phases, valid and invalid data, every check: 0 failures."""
    with fuzzed_api.client() as c:
        run_ids = [start(c, "simple", {"n": i})["id"] for i in range(2)]
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.url}/openapi.json", headers=AUTH,
                                           config=_config(run_ids))
    # every path but /openapi.json itself, which schemathesis leaves out
    assert len(list(schema.get_all_operations())) == 24 + len(FUZZED)
    failures, cases = _run(schema)
    assert cases > 400
    assert not failures, f"{len(failures)} schemathesis failures (seed {SEED}):\n\n" + \
        "\n\n".join(failures)


SSE, NDJSON = "text/event-stream", "application/x-ndjson"
HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


@pytest.fixture
def api_schema(api):
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json", headers=AUTH,
                                         config=schemathesis.Config.from_dict(
                                             {"cache": {"enabled": False}}))


def test_the_streams_answer_as_documented(api_schema, client):
    """What schemathesis does not ask for by itself: the SSE and NDJSON streams (Accept)."""
    run = start(client, "simple", {"n": 1}, params={"wait": 10})
    assert run["state"] == "succeeded"
    start_op = api_schema["/workflows/simple/runs"]["POST"]
    for case in (
        start_op.Case(body={"n": 2}, headers={"Accept": SSE}, media_type="application/json"),
        start_op.Case(body={"n": 3}, headers={"Accept": NDJSON}, media_type="application/json"),
        api_schema["/runs/{run_id}/events"]["GET"].Case(path_parameters={"run_id": run["id"]},
                                                        headers={"Accept": SSE}),
    ):
        response = case.call_and_validate(headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"][0].startswith(case.headers["Accept"])


def test_a_websocket_handshake_answers_as_documented(api_schema, client):
    run = start(client, "simple", {"n": 1})
    case = api_schema["/runs/{run_id}/stream"]["GET"].Case(
        path_parameters={"run_id": run["id"]}, headers=HANDSHAKE)
    # Its own connection (no session): after the 101 it belongs to the socket.
    response = case.call_and_validate(headers=AUTH, excluded_checks=[not_a_server_error])
    assert response.status_code == 101


# -- bugs schemathesis found: a handshake missing its headers, input laxer than its schema ---


@pytest.mark.parametrize("missing", ["Sec-WebSocket-Version", "Sec-WebSocket-Key"])
def test_a_websocket_handshake_without_its_version_or_key_is_refused(client, missing):
    run = start(client, "simple", {"n": 1})
    headers = {name: value for name, value in HANDSHAKE.items() if name != missing}
    response = client.get(f"/runs/{run['id']}/stream", headers=headers)
    assert response.status_code in (400, 426) and "error" in response.json()


def test_a_deflate_window_outside_8_to_15_is_declined_not_refused(api, client):
    """RFC 7692: the server declines such an offer and the handshake goes on (a 400 for
    it, as a first fix had it, refused a socket the protocol allows)."""
    import websocket

    run = start(client, "simple", {"n": 1}, params={"wait": 10})
    sock = websocket.create_connection(
        f"{api.ws_url}/runs/{run['id']}/stream?token={run['token']}", timeout=20,
        header=["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=99"])
    assert json.loads(sock.recv())["type"] == "run.queued"
    sock.close()


def test_a_plain_get_of_the_stream_says_how_to_read_it(client):
    """flask-sock's answer was "The browser (or proxy) sent a request that this server
    could not understand."."""
    run = start(client, "simple", {"n": 1})
    response = client.get(f"/runs/{run['id']}/stream")
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("This URL is a WebSocket: open it")
    assert "Accept: text/event-stream" in response.json()["error"]["message"]


@pytest.mark.parametrize("header, value", [
    ("Sec-WebSocket-Protocol", "chät".encode()), ("Sec-WebSocket-Extensions", "deflaté".encode()),
    ("Connection", "Upgrade, kéep".encode()),
    ("Sec-WebSocket-Extensions", b"permessage-deflate; server_max_window_bits=abc"),
    ("Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits=1.5"),
    ("Host", b"xn--zz")])
def test_a_websocket_handshake_wsproto_cannot_read_is_refused_not_a_500(client, header, value):
    """wsproto raised UnicodeDecodeError or ValueError inside the handshake: a 500. (A
    window size that is an integer outside 8 to 15 is declined by wsproto: still a 101.)"""
    run = start(client, "simple", {"n": 1})
    response = client.get(f"/runs/{run['id']}/stream", headers={**HANDSHAKE, header: value})
    assert response.status_code == 400, response.text
    assert header in response.json()["error"]["fields"]


@pytest.mark.parametrize("n", [2.5, "7", 2.5890419884777833e-42])
def test_a_start_whose_input_breaks_the_published_schema_is_refused(client, n):
    response = client.post("/workflows/simple/runs", json={"n": n})
    assert response.status_code == 400 and "n" in response.json()["error"]["fields"]


@pytest.mark.parametrize("body", [b"[1, NaN]", b"[Infinity]", b"[" * 5000 + b"]" * 5000,
                                  b'{"n": 1, "x": "\\ud800"}'])
def test_json_that_cannot_be_stored_is_refused(client, body):
    response = client.post("/workflows/looping/runs", content=body,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"


def test_an_integer_past_python_s_digit_limit_is_refused_as_what_it_is(client):
    """Valid JSON, which Python's int() refuses past 4300 digits: the answer blamed NaN and
    lone surrogates, which the body did not hold."""
    response = client.post("/workflows/looping/runs", content=b'{"n": ' + b"9" * 5000 + b"}",
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "The request body holds an integer of more than 4300 digits; send it as a string.")


@pytest.mark.parametrize("cursor", ["34038204621009700103-16391",
                                    "18446744073709551615-18446744073709551615", "\u0661-\u0661"])
def test_an_out_of_range_last_event_id_is_refused_not_a_500(client, cursor):
    run = start(client, "simple", {"n": 1}, params={"wait": 10})
    response = client.get(f"/runs/{run['id']}/events",
                          headers={"Accept": "text/event-stream",
                                   "Last-Event-ID": cursor.encode()})
    assert response.status_code == 400  # not the whole history again, as if none was sent
    assert "Last-Event-ID" in response.json()["error"]["fields"]


def test_the_document_follows_a_redefined_workflow(flowkit_env, worker, monkeypatch):
    """The document is kept between requests and built again when a served workflow is
    defined anew (its input schema is the request body's)."""
    monkeypatch.setitem(flowkit.workflow._workflows, "simple", workflows.simple)  # restored after
    for served in serve(make_app(workflows=["simple"])):
        c = served.client()
        first = c.get("/openapi.json").json()
        assert c.get("/openapi.json").json() == first
        flowkit.Workflow("simple", [workflows.add_one],
                         input_schema={"topic": fields.String(required=True)})
        doc = c.get("/openapi.json").json()
        ref = doc["paths"]["/workflows/simple/runs"]["post"]["requestBody"]["content"][
            "application/json"]["schema"]["$ref"]
        assert list(doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]) == ["topic"]
