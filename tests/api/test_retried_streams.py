"""A stream ends at the run's latest terminal event only: a retried run's subscribers replay
its ``run.failed`` and go on to its success; a cursor at the final event closes at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import websocket

import flowkit
from tests.api.helpers import sse_read, start, ws_connect, ws_read
from tests.api.test_watch import browser, shown_ids  # noqa: F401 - the Chromium fixture

WAIT = 20


def retried(client: httpx.Client) -> dict:
    """A run that failed, was retried and succeeded: its stream holds both terminal events."""
    run = start(client, "exhausted", {"n": 1, "fail_times": 2})
    assert flowkit.get_run(run["id"]).wait(WAIT).state == "failed"
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202
    assert flowkit.get_run(run["id"]).wait(WAIT).state == "succeeded"
    return run


def history(run_id: str) -> list[str]:
    return [e.id for e in flowkit.history(run_id)]


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_a_fresh_websocket_subscriber_replays_the_failure_and_ends_at_the_success(api, client):
    run = retried(client)
    got = ws_read(ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"]))
    assert [e["id"] for e in got] == history(run["id"])
    assert "run.failed" in types(got) and types(got)[-1] == "run.succeeded"


def test_a_fresh_sse_subscriber_replays_the_failure_and_ends_at_the_success(client):
    run = retried(client)
    got = sse_read(client, f"/runs/{run['id']}/events",
                   headers={"Accept": "text/event-stream"})
    assert [e["id"] for e in got] == history(run["id"])
    assert "run.failed" in types(got) and types(got)[-1] == "run.succeeded"


def test_follow_and_the_cli_follow_a_retried_run_to_its_success(flowkit_env, client):
    run = retried(client)
    followed = list(flowkit.follow(run["id"]))
    assert [e.id for e in followed] == history(run["id"]) and followed[-1].type == "run.succeeded"
    cli = subprocess.run([sys.executable, "-m", "flowkit.cli", "events", "-f", "--json", run["id"]],
                         env={**os.environ, **flowkit_env}, capture_output=True,
                         text=True, timeout=60)
    assert [json.loads(line)["id"] for line in cli.stdout.splitlines()] == history(run["id"])


def test_a_subscriber_live_when_the_run_fails_is_closed_and_resumes_after_the_retry(api, client):
    run = start(client, "exhausted", {"n": 1, "fail_times": 2})
    url = f"{api.ws_url}/runs/{run['id']}/stream"
    first = ws_read(ws_connect(url, token=run["token"]))  # live: closed at the failure
    assert types(first)[-1] == "run.failed"
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202
    rest = ws_read(ws_connect(url, token=run["token"], after=first[-1]["id"]))
    assert types(rest)[0] == "run.restarted" and types(rest)[-1] == "run.succeeded"
    assert [e["id"] for e in first + rest] == history(run["id"])


def test_resuming_from_the_final_terminal_event_closes_at_once(api, client):
    run = start(client, "simple", {"n": 1})
    flowkit.get_run(run["id"]).wait(WAIT)
    last = history(run["id"])[-1]
    # a stream that stayed open would send nothing but pings: these reads would time out
    sock = websocket.create_connection(
        f"{api.ws_url}/runs/{run['id']}/stream?after={last}&token={run['token']}", timeout=5)
    assert ws_read(sock) == []
    with httpx.Client(base_url=api.url, timeout=5,
                      headers={"Authorization": f"Bearer {run['token']}"}) as quick:
        ended = quick.get(f"/runs/{run['id']}/events",
                          headers={"Accept": "text/event-stream", "Last-Event-ID": last})
        assert ended.status_code == 204 and ended.content == b""  # SSE's "no more"
    assert list(flowkit.follow(run["id"], after=last)) == []


def test_the_watch_page_of_a_retried_run_shows_its_success_after_a_refresh(
        api, client, browser):  # noqa: F811 - the fixture imported above
    run = start(client, "exhausted", {"n": 1, "fail_times": 2})
    page = browser.new_page()
    page.goto(f"{api.url}{run['urls']['watch']}?token={run['token']}")
    page.wait_for_selector('#state[data-state="failed"]')  # not a JS predicate: CSP forbids eval
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202
    flowkit.get_run(run["id"]).wait(WAIT)
    page.reload()  # the page knew the failure; a refresh reconnects and learns the rest
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert shown_ids(page) == history(run["id"])
    page.close()

