"""The OpenAPI document, and schemathesis fuzzing the real server against it."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.conftest import API_KEY, make_app, serve

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Workflows whose runs stay cheap whatever input the fuzzer invents.
FUZZED = ["simple", "chatty"]


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
                 "/workflows", "/healthz"):
        assert path in doc["paths"], path


def test_fuzzing_finds_no_server_error_and_no_schema_violation(fuzzed_api, store):
    """Every operation of /openapi.json, positive and negative cases, against the real server."""
    schema = schemathesis.openapi.from_url(f"{fuzzed_api.url}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case):
            case.call_and_validate(
                base_url=fuzzed_api.url,
                headers=AUTH,
                checks=[not_a_server_error, response_schema_conformance,
                        status_code_conformance, content_type_conformance],
            )

        try:
            check()
        except Unsatisfiable:
            # no parameter or body to make invalid (e.g. GET /workflows)
            assert mode is GenerationMode.NEGATIVE, operation.label
