"""Answering paused runs over HTTP and from the shell: input (a run token may answer its own
run), events, delayed starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flowkit
from tests import workflows as wf
from tests.api.helpers import start
from tests.test_waits import paused


def test_input_over_http_is_validated_and_resumes_the_run(api, client):
    run = start(client, "approval", {"n": 1})
    paused(flowkit.get_run(run["id"]))
    bad = client.post(f"/runs/{run['id']}/input/approval", json={"ok": "perhaps"})
    assert bad.status_code == 400 and "ok" in bad.json()["error"]["fields"]
    null = client.post(f"/runs/{run['id']}/input/approval", json={"ok": None})
    assert null.json()["error"]["fields"] == {"ok": ["null is not of type boolean"]}  # not None
    missing = client.post(f"/runs/{run['id']}/input/approval", json={"note": "x"})
    assert missing.status_code == 400
    assert missing.json()["error"]["fields"] == {"ok": ["Missing data for required field."]}
    unknown = client.post(f"/runs/{run['id']}/input/other", json={"ok": True})
    assert unknown.status_code == 409 and unknown.json()["error"]["code"] == "invalid_state"
    assert unknown.json()["error"]["message"].endswith(
        "does not wait for input 'other': it waits for input 'approval'.")
    slashed = client.post(f"/runs/{run['id']}/input/a%2Fb", json={"ok": True})
    assert slashed.status_code == 400  # the name's rule, not the routing 404
    assert slashed.json()["error"]["fields"] == {
        "name": ["An input's name is 1 to 200 characters without '/', not 'a/b'."]}
    # the run's own token answers it (a page answering its own form)
    with api.client(key=run["token"]) as page:
        accepted = page.post(f"/runs/{run['id']}/input/approval", json={"ok": True})
        assert accepted.status_code == 202 and accepted.json()["outcome"] == "resumed"
        again = page.post(f"/runs/{run['id']}/input/approval", json={"ok": True})
        assert again.status_code == 200 and again.json()["outcome"] == "same"
        other = page.post(f"/runs/{run['id']}/input/approval", json={"ok": False})
        assert other.status_code == 409 and "was answered already, with another value" in \
            other.json()["error"]["message"]
    assert flowkit.get_run(run["id"]).wait(20).output == {"n": 1, "approved": True}


def test_items_waiting_under_one_name_are_answered_by_step_over_http(api, client):
    """The dashboard's form for item 0 answered item 1: the wait was found by name only."""
    from tests.conftest import wait_until

    run = start(client, "same_named_items", {"n": 2})
    wait_until(lambda: len(flowkit.get_run(run["id"]).waits) == 2, 20, "both items' waits")
    steps = {w["prompt"]: w["step"] for w in flowkit.get_run(run["id"]).waits}
    url = f"/runs/{run['id']}/input/value"
    ambiguous = client.post(url, json={"value": 1})
    assert ambiguous.status_code == 400
    assert list(ambiguous.json()["error"]["fields"]) == ["step"]
    with api.client(key=run["token"]) as page:  # a page answers its own run's forms
        for i, value in ((0, 5), (1, 7)):
            step = steps[f"item {i}?"]
            answered = page.post(url, params={"step": step}, json={"value": value})
            assert answered.status_code == 202, answered.text
            again = page.post(url, params={"step": step}, json={"value": value})
            assert again.status_code == 200 and again.json()["outcome"] == "same"
    assert flowkit.get_run(run["id"]).wait(20).output == {"total": 12}
    answers = {e.data["step"] for e in flowkit.get_run(run["id"]).events()
               if e.type == "run.resumed"}
    assert answers == set(steps.values())


def test_a_run_token_answers_only_its_own_run(api, client):
    mine = start(client, "approval", {"n": 1})
    other = start(client, "approval", {"n": 2})
    paused(flowkit.get_run(other["id"]))
    with api.client(key=mine["token"]) as page:
        refused = page.post(f"/runs/{other['id']}/input/approval", json={"ok": True})
        assert refused.status_code == 403
        assert page.post("/events/payment:1", json={}).status_code == 403  # full access only
    flowkit.cancel(mine["id"])
    flowkit.cancel(other["id"])


def test_an_event_over_http_wakes_the_runs_waiting_for_it(client):
    run = wf.payment.start({"order": 11})
    paused(run)
    sent = client.post("/events/payment:11", json={"amount": 3})
    assert sent.status_code == 202 and sent.json() == {"woken": 1}
    assert run.result(20)["paid"] == {"amount": 3}
    too_long = client.post("/events/" + "k" * 201, json={})
    assert too_long.status_code == 400
    assert too_long.json()["error"]["fields"] == {"key": ["1 to 200 characters."]}


def test_a_key_or_name_starting_with_a_slash_is_itself_not_redirected_to_another(client):
    """The router merged the leading slash away and answered a 308, an HTML page: a client
    following it (python's requests) woke the runs waiting on "pay:5" with an event sent for
    "/pay:5", and answered the input "approval" with one sent to "/approval"."""
    slashed = wf.payment.start({"order": 1, "key": "/pay:5"})
    plain = wf.payment.start({"order": 2, "key": "pay:5"})
    paused(slashed)
    paused(plain)
    sent = client.post("/events/%2Fpay%3A5", json={"amount": 3}, follow_redirects=False)
    assert sent.status_code == 202 and sent.json() == {"woken": 1}, sent.text
    assert slashed.result(20)["paid"] == {"amount": 3}
    assert flowkit.get_run(plain.id).state == "waiting"
    approval = wf.approval.start({"n": 1})
    paused(approval)
    named = client.post(f"/runs/{approval.id}/input/%2Fapproval", json={"ok": True},
                        follow_redirects=False)
    assert named.status_code == 400 and "name" in named.json()["error"]["fields"], named.text
    assert flowkit.get_run(approval.id).state == "waiting"
    flowkit.cancel(plain.id)
    flowkit.cancel(approval.id)


def test_a_key_whose_escapes_are_not_utf8_is_400_not_another_key(client):
    run = wf.payment.start({"order": "\ufffd"})  # waits for payment:\ufffd
    paused(run)
    for path in ("/events/payment:%ff", "/events/payment:%FE", f"/runs/{run.id}/input/a%ff"):
        refused = client.post(path, json={"amount": 3})
        assert refused.status_code == 400, path
        assert refused.json()["error"]["code"] == "bad_request"
        assert "%C3%A9" in refused.json()["error"]["message"]
    assert flowkit.get_run(run.id).state == "waiting"  # no key stood for another
    sent = client.post("/events/payment:%EF%BF%BD", json={"amount": 3})  # U+FFFD itself
    assert sent.status_code == 202 and sent.json() == {"woken": 1}
    assert run.result(20)["paid"] == {"amount": 3}


def test_a_delayed_start_over_http_is_scheduled_and_cancellable(client):
    run = client.post("/workflows/simple/runs", params={"delay": 3600}, json={"n": 1}).json()
    assert run["state"] == "scheduled" and run["start_at"] > run["created_at"] + 3500
    assert client.post(f"/runs/{run['id']}/cancel").json()["state"] == "cancelled"


def test_delayed_start_errors_say_what_to_give_and_a_time_past_9999_is_held_to_it(client):
    too_far = client.post("/workflows/simple/runs", params={"delay": 10**8}, json={"n": 1})
    assert too_far.status_code == 400
    assert too_far.json()["error"]["fields"] == {"delay": [
        "Must be from 0 to 31622400 seconds (366 days); for a later start, give start_at "
        "(ISO 8601 with a time zone)."]}
    naive = client.post("/workflows/simple/runs", params={"start_at": "2030-01-01T09:00:00"},
                        json={"n": 1})
    assert naive.json()["error"]["fields"] == {"start_at": [
        "Give its time zone: e.g. 2026-12-24T09:00:00Z, or +01:00 for an offset."]}
    # an offset's + written unencoded, as that hint has it: decoded to a space, it was
    # "not a date-time flowkit can hold"
    plus = client.post("/workflows/simple/runs?start_at=2030-01-01T09:00:00+01:00",
                       json={"n": 1})
    assert plus.status_code == 202, plus.text
    assert plus.json()["start_at"] == 1893484800.0  # 08:00 UTC
    assert client.post(f"/runs/{plus.json()['id']}/cancel").status_code == 200
    # the year 10000 in UTC: taken (the published schema cannot bound it), held to 9999
    last = client.post("/workflows/simple/runs", json={"n": 1},
                       params={"start_at": "9999-12-31T23:59:59-23:59"})
    assert last.status_code == 202, last.text
    assert last.json()["start_at"] == 253_402_300_799.0
    assert client.post(f"/runs/{last.json()['id']}/cancel").status_code == 200


def test_a_summary_takes_run_ids_in_any_case(client):
    run = client.post("/workflows/simple/runs", params={"delay": 3600}, json={"n": 1}).json()
    lower = run["id"].lower()
    answer = client.get("/runs/summary", params={"ids": lower})
    assert answer.status_code == 200 and list(answer.json()["runs"]) == [lower]
    client.post(f"/runs/{run['id']}/cancel")


def test_the_cli_answers_input_and_sends_events(flowkit_env, store, worker):
    env = {**os.environ, **flowkit_env}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)

    run = wf.approval.start({"n": 1})
    paused(run)
    bad = cli("input", run.id, "approval", "{not json")
    assert bad.returncode == 2 and "must be JSON" in bad.stderr
    done = cli("input", run.id, "approval", '{"ok": true}', "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["outcome"] == "resumed"
    assert run.result(20)["approved"] is True
    waiting = wf.payment.start({"order": 12})
    paused(waiting)
    sent = cli("event", "payment:12", '{"amount": 9}', "--json")
    assert sent.returncode == 0 and json.loads(sent.stdout) == {"woken": 1}
    assert waiting.result(20)["paid"] == {"amount": 9}
