"""A finished run compacted by beat's sweep (its events and trace in one archive) reads the
same through every door: REST, SSE, WebSocket, the watch page's resume, follow, the trace."""

from __future__ import annotations

import flowkit
from flowkit import config
from flowkit.engine.reaper import compact_ended
from flowkit.store import get_store
from tests.api.helpers import sse_read, start, ws_connect, ws_read
from tests.api.test_retried_streams import retried

WAIT = 20


def everything(api, client, run: dict) -> dict:
    run_id = run["id"]
    events = client.get(f"/runs/{run_id}/events").json()
    middle = events["events"][2]["id"]
    return {
        "rest": events,
        "rest_after": client.get(f"/runs/{run_id}/events", params={"after": middle}).json(),
        "sse": sse_read(client, f"/runs/{run_id}/events", headers={"Accept": "text/event-stream"}),
        "sse_resumed": sse_read(client, f"/runs/{run_id}/events",
                                headers={"Accept": "text/event-stream", "Last-Event-ID": middle}),
        "ws": ws_read(ws_connect(f"{api.ws_url}/runs/{run_id}/stream", token=run["token"])),
        "follow": [e.id for e in flowkit.follow(run_id)],
        "trace": client.get(f"/runs/{run_id}/trace").json(),
        "record": client.get(f"/runs/{run_id}").json(),
    }


def test_a_compacted_run_reads_the_same_everywhere(api, client, monkeypatch):
    run = retried(client)  # failed, retried, succeeded: two terminal events in its history
    before = everything(api, client, run)
    monkeypatch.setattr(config, "_settings",
                        config.get_settings().replace(compact_after_seconds=0))
    assert run["id"] in compact_ended()
    store = get_store()
    assert store.redis.xlen(store.keys.events(run["id"])) == 0  # its events are archived
    assert everything(api, client, run) == before


def test_a_compacted_run_can_be_retried_and_its_stream_goes_on(api, client, monkeypatch):
    run = start(client, "exhausted", {"n": 1, "fail_times": 2})
    assert flowkit.get_run(run["id"]).wait(WAIT).state == "failed"
    monkeypatch.setattr(config, "_settings",
                        config.get_settings().replace(compact_after_seconds=0))
    assert run["id"] in compact_ended()
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202
    assert flowkit.get_run(run["id"]).wait(WAIT).state == "succeeded"
    got = ws_read(ws_connect(f"{api.ws_url}/runs/{run['id']}/stream", token=run["token"]))
    types = [e["type"] for e in got]
    assert types.count("run.failed") == 1 and types[-1] == "run.succeeded"
    assert [e["id"] for e in got] == [e.id for e in flowkit.history(run["id"])]
