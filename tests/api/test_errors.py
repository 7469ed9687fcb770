"""Every error is JSON in one shape, with the right status; nothing a client sends is a 500."""

from __future__ import annotations

import pytest

from tests.api.conftest import make_app, serve


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and isinstance(error["fields"], dict)
    return error


def test_invalid_input_is_400_with_field_messages_and_no_run(client, store):
    error = assert_error(client.post("/workflows/simple/runs", json={"n": "many"}), 400,
                         "validation_error")
    assert error["fields"] == {"n": ["Not a valid integer."]}
    missing = assert_error(client.post("/workflows/simple/runs", json={}), 400, "validation_error")
    assert "n" in missing["fields"]
    assert client.get("/runs").json()["runs"] == []


def test_a_body_of_many_unknown_fields_is_answered_with_the_first_50_messages(client, store):
    """90,000 unknown fields were answered with a 2.5 MB list of them."""
    body = {"n": 1, **{f"unknown_{i}": i for i in range(1000)}}
    response = client.post("/workflows/simple/runs", json=body)
    error = assert_error(response, 400, "validation_error")
    assert len(error["fields"]) == 51 and error["fields"]["unknown_0"] == ["Unknown field."]
    assert error["fields"]["_more"] == ["950 more fields have errors: fix these, and send it "
                                        "again."]
    assert len(response.content) < 4096


def nested(levels: int) -> dict:
    """An object ``levels`` deep: ``{"x": [[...]]}``."""
    inner: list = []
    for _ in range(levels - 2):
        inner = [inner]
    return {"x": inner}


def test_a_body_nested_past_the_limit_is_400_and_starts_nothing(client, store):
    """500 levels went through (JSON's own limit is about 900) and the run hung: the worker's
    stack gave out while it reported the step."""
    error = assert_error(client.post("/workflows/pacing/runs", json=nested(65)), 400,
                         "invalid_json")
    assert error["message"] == ("The request body nests objects and arrays more than 64 levels "
                                "deep; flatten it.")
    for path in ("/events/k", "/schedules"):
        assert_error(client.post(path, json=nested(65)), 400, "invalid_json")
    # past what json.loads itself parses: the same message, not "not valid JSON"
    deepest = client.post("/workflows/pacing/runs", content="[" * 5000 + "]" * 5000,
                          headers={"Content-Type": "application/json"})
    assert assert_error(deepest, 400, "invalid_json")["message"] == error["message"]
    assert client.get("/runs").json()["runs"] == []
    assert client.post("/workflows/pacing/runs", json=nested(64)).status_code == 202


def test_a_missing_concurrency_key_field_is_400_on_that_field(client, store):
    """The key's field missing was a ConfigError, answered 500."""
    error = assert_error(client.post("/workflows/per_tenant/runs", json={}), 400,
                         "validation_error")
    assert error["fields"] == {"tenant": [
        "Missing data for required field: this workflow's runs queue by it (its concurrency "
        "key)."]}
    assert client.get("/runs").json()["runs"] == []


def test_an_input_the_concurrency_key_function_cannot_key_is_400(client, store):
    """The function raising on the input (KeyError) was a 500; returning None a 503."""
    error = assert_error(client.post("/workflows/per_tenant_fn/runs", json={"other": 1}), 400,
                         "validation_error")
    assert error["fields"] == {"_schema": [
        "This workflow's runs queue by Concurrency(key=<lambda>), which raised KeyError: "
        "'tenant' for this input; send the fields it reads."]}
    error = assert_error(client.post("/workflows/per_tenant_fn/runs", json={"tenant": None}),
                         400, "validation_error")
    assert "which returned null for this input: a key is non-empty text" in (
        error["fields"]["_schema"][0])
    assert client.get("/runs").json()["runs"] == []
    assert client.post("/workflows/per_tenant_fn/runs", json={"tenant": "t1"}).status_code == 202


def test_body_that_is_not_json_is_400(client):
    response = client.post("/workflows/simple/runs", content=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert_error(response, 400, "invalid_json")


def test_non_object_input_is_400(client):
    error = assert_error(client.post("/workflows/simple/runs", json=[1, 2]), 400, "validation_error")
    assert "_schema" in error["fields"]


def test_unknown_workflow_and_run_are_404(client):
    error = assert_error(client.post("/workflows/nope/runs", json={}), 404, "not_found")
    assert error["message"].startswith("No workflow named 'nope'. Served here: ")
    assert "approval" in error["message"] and "more." in error["message"]
    assert_error(client.get("/workflows/nope"), 404, "not_found")
    typo = assert_error(client.post("/workflows/simpel/runs", json={}), 404, "not_found")
    assert typo["message"].startswith("No workflow named 'simpel'. Did you mean 'simple'? "
                                      "Served here: ")
    assert_error(client.get("/runs/01J00000000000000000000000"), 404, "not_found")
    assert_error(client.get("/runs/unknown/events"), 404, "not_found")
    assert_error(client.get("/no/such/path"), 404, "not_found")


def test_a_web_process_that_serves_no_workflow_says_to_import_them(flowkit_env, worker):
    # as a Flask app that never imported the module its workflows are defined in
    for served in serve(make_app(workflows=["defined_nowhere"])):
        error = assert_error(served.client().post("/workflows/defined_nowhere/runs", json={}),
                             404, "not_found")
    assert "serves no workflow: import your workflows' module" in error["message"]


def test_wrong_method_is_405_with_allow(client):
    assert_error(client.delete("/workflows"), 405, "method_not_allowed")
    assert "GET" in client.put("/runs").headers["Allow"]


def test_body_over_the_limit_is_413(client):
    big = {"n": 1, "padding": "x" * 100_000}
    assert_error(client.post("/workflows/simple/runs", json=big), 413, "payload_too_large")


@pytest.mark.parametrize("params", [{"state": "weird"}, {"limit": "0"}, {"limit": "x"},
                                    {"limit": "100000"}])
def test_bad_query_parameters_are_400_with_fields(client, params):
    error = assert_error(client.get("/runs", params=params), 400, "validation_error")
    assert set(error["fields"]) <= {"state", "limit"} and error["fields"]


def test_bad_cursor_and_bad_idempotency_key_are_400(client):
    run = client.post("/workflows/simple/runs", json={"n": 1}).json()
    error = assert_error(client.get(f"/runs/{run['id']}/events", params={"after": "yesterday"}),
                         400, "validation_error")
    assert "after" in error["fields"]
    response = client.post("/workflows/simple/runs", json={"n": 1},
                           headers={"Idempotency-Key": "has space"})
    assert_error(response, 400, "validation_error")
    # empty is refused, not read as no key (a client's key that came out empty)
    response = client.post("/workflows/simple/runs", json={"n": 1},
                           headers={"Idempotency-Key": ""})
    error = assert_error(response, 400, "validation_error")
    assert "leave the header out" in error["fields"]["Idempotency-Key"][0]


@pytest.mark.long  # mostly waiting (5-9 s): beside the rest (scripts/test)
def test_redis_down_is_a_503_that_says_to_retry(flowkit_env, monkeypatch):
    """Whatever the API cannot read because Redis is away answers 503, never 500."""
    from flowkit import config
    from flowkit.testing import free_port
    from tests.api.conftest import make_app, serve

    dead = config.get_settings().replace(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_retry_seconds=0)
    monkeypatch.setattr(config, "_settings", dead)
    for served in serve(make_app()):
        with served.client() as c:
            for method, path in (("GET", "/runs"), ("GET", "/runs/01ANY"),
                                 ("POST", "/workflows/simple/runs")):
                response = c.request(method, path, json={"n": 1})
                assert response.status_code == 503, (path, response.text)
                assert response.json()["error"]["code"] == "store_unavailable"
                assert response.headers["Retry-After"] == "2"


def test_a_number_past_a_float_s_range_is_400_not_infinity(client, store):
    """``1e400`` parses to Infinity: it was stored, and every reader of the run's JSON then
    failed on ``Infinity``, which JSON does not have."""
    for path in ("/workflows/pacing/runs", "/events/k", "/schedules"):
        response = client.post(path, content=b'{"workflow": "pacing", "every": 60, "x": 1e400}',
                               headers={"Content-Type": "application/json"})
        error = assert_error(response, 400, "invalid_json")
        assert "a number too large for a float" in error["message"]
    assert client.get("/runs").json()["runs"] == []
