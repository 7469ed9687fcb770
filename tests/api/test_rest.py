"""REST endpoints against a real server and a real worker."""

from __future__ import annotations

import pytest

import flowkit
from tests.api.helpers import start
from tests.conftest import open_gate, reached_gate, wait_until


def test_workflows_are_listed_with_their_input_schema_as_json_schema(client):
    listed = client.get("/workflows").json()["workflows"]
    simple = next(w for w in listed if w["name"] == "simple")
    assert simple["input_schema"]["properties"]["n"] == {"type": "integer"}
    assert simple["input_schema"]["required"] == ["n"]
    assert client.get("/workflows/simple").json() == simple
    assert simple["runs_url"] == "/workflows/simple/runs"


def test_start_answers_202_with_urls_and_the_run_completes(client):
    body = client.post("/workflows/simple/runs", json={"n": 4})
    assert body.status_code == 202
    run = body.json()
    assert run["state"] == "queued" and run["created"] is True
    assert body.headers["Location"] == f"/runs/{run['id']}"
    assert run["urls"]["events"] == f"/runs/{run['id']}/events"
    assert run["urls"]["stream"] == f"/runs/{run['id']}/stream"
    assert flowkit.get_run(run["id"]).wait(20).state == "succeeded"
    assert client.get(f"/runs/{run['id']}").json()["state"] == "succeeded"
    assert client.get(run["urls"]["output"]).json() == {"output": {"n": 10}}


def test_idempotency_key_returns_the_same_run_with_200(client):
    headers = {"Idempotency-Key": "order-42"}
    first = client.post("/workflows/simple/runs", json={"n": 1}, headers=headers)
    again = client.post("/workflows/simple/runs", json={"n": 1}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["created"] is False
    other = client.post("/workflows/simple/runs", json={"n": 2}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_runs_are_listed_newest_first_filtered_and_paginated(client):
    ids = [start(client, "simple", {"n": i})["id"] for i in range(3)]
    other = start(client, "chatty", {"n": 1})["id"]
    for run_id in [*ids, other]:
        flowkit.get_run(run_id).wait(20)
    page = client.get("/runs", params={"workflow": "simple", "limit": 2}).json()
    assert [r["id"] for r in page["runs"]] == [ids[2], ids[1]]
    rest = client.get("/runs", params={"workflow": "simple", "limit": 2, "before": page["next"]})
    assert [r["id"] for r in rest.json()["runs"]] == [ids[0]] and rest.json()["next"] is None
    everything = client.get("/runs", params={"state": "succeeded"}).json()["runs"]
    assert {r["id"] for r in everything} == {*ids, other}
    assert client.get("/runs", params={"state": "failed"}).json()["runs"] == []


def test_a_page_cursor_whose_run_expired_goes_on_and_a_bogus_one_is_refused(client, store):
    ids = [start(client, "simple", {"n": i})["id"] for i in range(3)]
    for run_id in ids:
        flowkit.get_run(run_id).wait(20)
    page = client.get("/runs", params={"workflow": "simple", "limit": 2}).json()
    # the cursor's run expires between two pages (its record and index entries gone)
    store.redis.delete(store.keys.run(page["next"]))
    store.redis.zrem(store.keys.runs, page["next"])
    store.redis.zrem(store.keys.runs_of("simple"), page["next"])
    rest = client.get("/runs", params={"workflow": "simple", "limit": 2, "before": page["next"]})
    assert [r["id"] for r in rest.json()["runs"]] == [ids[0]]  # not the first page again
    bogus = client.get("/runs", params={"before": "NOSUCH"})
    assert bogus.status_code == 400
    assert "Not a run id" in bogus.json()["error"]["fields"]["before"][0]


@pytest.mark.parametrize("limit", [501, 10_001, 10**30])
def test_a_page_over_the_deployment_s_size_says_so_whatever_the_number(client, limit):
    """600 said "At most 500." and 10001 marshmallow's "less than or equal to 10000"."""
    answer = client.get("/runs", params={"limit": limit})
    assert answer.status_code == 400
    assert answer.json()["error"]["fields"] == {"limit": [
        "At most 500 runs a page (FLOWKIT_API_MAX_PAGE_SIZE): follow `next` for more."]}


def test_runs_are_filtered_by_owner_and_paginated_within_it(client, store):
    wf = flowkit.get_workflow("simple")
    acme = [wf.start({"n": i}, owner="acme").id for i in range(3)]
    wf.start({"n": 9}, owner="globex")
    page = client.get("/runs", params={"owner": "acme", "limit": 2}).json()
    assert [r["id"] for r in page["runs"]] == [acme[2], acme[1]]
    rest = client.get("/runs", params={"owner": "acme", "limit": 2, "before": page["next"]})
    assert [r["id"] for r in rest.json()["runs"]] == [acme[0]]
    assert client.get("/runs", params={"owner": "nobody"}).json()["runs"] == []
    bad = client.get("/runs", params={"owner": ""})
    assert bad.status_code == 400 and "owner" in bad.json()["error"]["fields"]
    # an owner longer than the listing took (200): stored, and no one could list its runs
    long = "tenant-" + "x" * 225 + "@example.com"
    mine = wf.start({"n": 1}, owner=long).id
    assert [r["id"] for r in client.get("/runs", params={"owner": long}).json()["runs"]] == [mine]
    with pytest.raises(flowkit.ConfigError, match="of up to 1000 characters"):
        wf.start({"n": 1}, owner="x" * 1001)


def test_events_history_pages_with_after_and_limit(client):
    run = start(client, "chatty", {"n": 1})
    flowkit.get_run(run["id"]).wait(20)
    full = client.get(f"/runs/{run['id']}/events").json()
    assert full["done"] is True and full["events"][-1]["type"] == "run.succeeded"
    chunks = [e["chunk"] for e in full["events"] if e["type"] == "step.output"]
    assert chunks == ["alpha", "beta", "gamma"]
    first = client.get(f"/runs/{run['id']}/events", params={"limit": 3}).json()
    second = client.get(f"/runs/{run['id']}/events", params={"after": first["next"]}).json()
    assert first["events"] + second["events"] == full["events"]
    assert first["done"] is False


def test_a_page_ending_on_an_end_that_a_retry_followed_is_not_done(client):
    """``done`` came from the page's last event alone: a page ending on a retried run's
    first run.failed said done, with the retry's events still to read."""
    run = start(client, "exhausted", {"n": 1})
    assert flowkit.get_run(run["id"]).wait(20).state == "failed"
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202
    assert flowkit.get_run(run["id"]).wait(20).state == "succeeded"
    full = client.get(f"/runs/{run['id']}/events").json()
    assert full["done"] is True
    types = [e["type"] for e in full["events"]]
    first_end = types.index("run.failed") + 1
    page = client.get(f"/runs/{run['id']}/events", params={"limit": first_end}).json()
    assert page["events"][-1]["type"] == "run.failed" and page["done"] is False
    rest = client.get(f"/runs/{run['id']}/events", params={"after": page["next"]}).json()
    assert page["events"] + rest["events"] == full["events"] and rest["done"] is True


def test_output_of_a_run_still_running_is_a_409(client):
    run = start(client, "chain3", {"n": 1})
    reached_gate(flowkit.get_run(run["id"]), "gated")
    response = client.get(f"/runs/{run['id']}/output")
    assert response.status_code == 409 and response.json()["error"]["code"] == "no_output"
    open_gate(flowkit.get_run(run["id"]), "gated")
    assert flowkit.get_run(run["id"]).wait(20).output == {"n": 204}


def test_cancel_a_running_run_then_cancel_again_is_409(client):
    run = start(client, "chain3", {"n": 1})
    reached_gate(flowkit.get_run(run["id"]), "gated")
    cancelled = client.post(f"/runs/{run['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    again = client.post(f"/runs/{run['id']}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    open_gate(flowkit.get_run(run["id"]), "gated")


def test_retry_resumes_a_failed_run_from_its_failed_step(client):
    run = start(client, "exhausted", {"n": 1, "fail_times": 2})
    assert flowkit.get_run(run["id"]).wait(20).state == "failed"
    retried = client.post(f"/runs/{run['id']}/retry")
    assert retried.status_code == 202 and retried.json()["state"] == "queued"
    done = flowkit.get_run(run["id"]).wait(20)
    assert done.state == "succeeded" and done.output == {"n": 2, "calls": 3}
    again = client.post(f"/runs/{run['id']}/retry")
    assert again.status_code == 409


def test_trace_endpoint_answers_for_a_known_run(client):
    run = start(client, "simple", {"n": 1})
    response = client.get(f"/runs/{run['id']}/trace")
    assert response.status_code == 200 and isinstance(response.json()["spans"], list)


def test_healthz_needs_no_credentials_and_lists_workers_that_beat_recently(api, store):
    # the store fixture flushed the workers' presence: await the next heartbeat
    wait_until(lambda: store.nodes_seen_since(0), message="a worker heartbeat")
    with api.client(key=None) as anonymous:
        assert set(anonymous.get("/healthz").json()) == {"status", "redis"}
    with api.client() as operator:
        health = operator.get("/healthz")
    assert health.status_code == 200
    assert health.json()["redis"] is True and len(health.json()["workers"]) >= 1
