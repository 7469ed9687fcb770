"""A blocking read cut by a failover: the server a read blocks on stops being the primary
(a Sentinel switch, a Cluster's ``CLUSTER FAILOVER``) and answers ``-UNBLOCKED ...``.
``flowkit.follow`` (and so ``flowkit follow``) died of it with a traceback; the relay's
thread, which feeds every SSE and WebSocket follower of a web process, would have too.
Redis's ``CLIENT UNBLOCK <id> ERROR`` gives a blocked read the same answer."""

from __future__ import annotations

import threading

import pytest

import flowkit
from flowkit.store import get_store
from tests import workflows as wf
from tests.api.helpers import sse_read, start
from tests.conftest import open_gate, reached_gate, wait_until

pytestmark = pytest.mark.integration
WAIT = 20


def unblock_every_read() -> int:
    """Answer every client blocked in XREAD with -UNBLOCKED; returns how many there were."""
    redis = get_store().redis
    blocked = [c["id"] for c in redis.client_list() if c.get("cmd") == "xread"
               and "b" in c.get("flags", "")]
    for client_id in blocked:
        assert redis.execute_command("CLIENT", "UNBLOCK", client_id, "ERROR") == 1
    return len(blocked)


def test_a_follow_blocked_when_its_read_is_unblocked_reads_on(worker, store):
    run = wf.chain3.start({"n": 1})
    reached_gate(run, "gated")
    seen: list[str] = []
    failed: list[BaseException] = []

    def follow() -> None:
        try:
            seen.extend(event.type for event in flowkit.follow(run.id))
        except BaseException as exc:  # noqa: BLE001 - what the test is about
            failed.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    wait_until(lambda: unblock_every_read() > 0, WAIT, "the follow to block in XREAD")
    open_gate(run, "gated")
    follower.join(WAIT)
    assert not follower.is_alive() and failed == []
    assert seen[-1] == "run.succeeded" and seen.count("step.completed") == 3


def test_the_relay_feeds_its_streams_on_after_its_read_is_unblocked(api, client):
    run = start(client, "chain3", {"n": 1})
    handle = flowkit.get_run(run["id"])
    reached_gate(handle, "gated")
    got: list[dict] = []

    def read() -> None:
        got.extend(sse_read(client, f"/runs/{run['id']}/events",
                            {"Accept": "text/event-stream"}))

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: unblock_every_read() > 0, WAIT, "the relay to block in XREAD")
    open_gate(handle, "gated")
    reader.join(WAIT)
    assert not reader.is_alive()
    assert got[-1]["type"] == "run.succeeded"
