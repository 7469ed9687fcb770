"""A run's first message goes out with the script that stores the run (engine.publish):
what it pushes is what Celery would have published, once per run, and only when the broker
shares the store's Redis server."""

from __future__ import annotations

import base64
import json

import pytest

import flowkit
from flowkit.engine import canvas, publish
from flowkit.engine.broker import continued_priority, fresh_priority, get_app, use_app
from flowkit.urls import shared_server_db
from tests import workflows as wf

pytestmark = pytest.mark.integration

#: A queue no worker of the session consumes: its messages stay where start() put them.
NOBODY = "fused-nobody"
parked = flowkit.Workflow("fused.parked", [wf.add_one, wf.double], queue=NOBODY,
                          input_schema=wf.number_schema)


def test_the_broker_shares_the_store_s_server_only_by_scheme_host_port_and_credentials():
    assert shared_server_db("redis://h:1/1", "redis://h:1/0") == 0
    assert shared_server_db("redis://h:1", "redis://h:1") == 0
    assert shared_server_db("redis://:pw@h:1/1", "redis://:pw@h:1/3") == 3
    assert shared_server_db("unix:///tmp/r.sock?db=1", "unix:///tmp/r.sock?db=2") == 2
    # the broker as Celery is given a socket store's URL (celery_redis_url)
    assert shared_server_db("unix:///tmp/r.sock?db=1", "redis+socket:///tmp/r.sock?virtual_host=2") == 2
    assert shared_server_db("unix:///tmp/r.sock", "redis+socket:///tmp/other.sock") is None
    assert shared_server_db("redis://h:1/1", "redis://h:2/1") is None  # another server
    assert shared_server_db("redis://:a@h:1/1", "redis://:b@h:1/1") is None  # another user
    assert shared_server_db("redis://h:1/1", "rediss://h:1/1") is None
    assert shared_server_db("redis://h:1/1", "amqp://guest@h//") is None
    assert shared_server_db("redis+sentinel://h:26379/mymaster", "sentinel://h:26379") is None


def broker_messages(queue: str) -> list[dict]:
    """The envelopes waiting in ``queue``'s Redis lists on the session's broker, decoded."""
    conn = get_app().connection_for_read()
    try:
        client = conn.default_channel.client
        keys = [k for k in client.keys(f"{queue}*") if k.decode().startswith(queue)]
        return [json.loads(raw) for key in keys for raw in client.lrange(key, 0, -1)]
    finally:
        conn.release()


def body(envelope: dict) -> list:
    return json.loads(base64.b64decode(envelope["body"]))


@pytest.fixture
def nobody_queue(store):
    """The parked queue, emptied before and after."""
    conn = get_app().connection_for_write()
    conn.default_channel.queue_purge(NOBODY)
    yield NOBODY
    conn.default_channel.queue_purge(NOBODY)
    conn.release()


def test_the_captured_message_is_the_one_celery_publishes(store, nobody_queue):
    sig, args = canvas.first_canvas(parked, "run-a", {"n": 5}, NOBODY)
    fused = publish.first_messages(store, "run-a", sig, args)
    assert fused is not None and fused.db == 0 and len(fused.items) == 1
    sig.apply_async(args=args)  # Celery's own publish of the same canvas
    (published,) = broker_messages(NOBODY)
    key, payload = fused.items[0]
    captured = json.loads(payload)
    assert key.startswith(NOBODY)
    assert captured["headers"]["task"] == published["headers"]["task"] == \
        f"flowkit.step.{wf.add_one.name}"
    assert captured["properties"]["priority"] == published["properties"]["priority"]
    assert captured["properties"]["delivery_info"]["routing_key"] == NOBODY
    args_c, kwargs_c, embed_c = body(captured)
    args_p, kwargs_p, embed_p = body(published)
    assert (args_c, kwargs_c) == (args_p, kwargs_p) == (
        [{"n": 5}], {"run_id": "run-a", "key": f"0:{wf.add_one.name}", "gen": 0})
    chain = [(s["task"], s["kwargs"]) for s in embed_c["chain"]]
    assert chain == [(s["task"], s["kwargs"]) for s in embed_p["chain"]]
    assert [task for task, _ in chain] == ["flowkit.finish", f"flowkit.step.{wf.double.name}"]


def test_a_start_pushes_its_first_message_with_the_run_and_only_once(store, nobody_queue):
    run = parked.start({"n": 3}, idempotency_key="once")
    again = parked.start({"n": 3}, idempotency_key="once")
    assert again.id == run.id and not again.created
    messages = broker_messages(NOBODY)
    assert [body(m)[1]["run_id"] for m in messages] == [run.id]
    assert store.get_run(run.id)["state"] == "queued"


def test_a_process_without_the_step_tasks_sends_a_run_at_its_fresh_priority(store, nobody_queue):
    """A web process sends steps with a producer app that registers no step task, and
    Celery's task_default_priority applies only to registered tasks: a default run's
    message carried no priority, which the Redis broker reads as 0, the level of continued
    work, so a backlog of default runs started over HTTP went before priority 1-8 runs
    and before resumed runs."""
    worker_app = get_app()
    use_app(None)  # as in the web process: get_app() makes a producer app
    try:
        assert f"flowkit.step.{wf.add_one.name}" not in get_app().tasks
        default, urgent = parked.start({"n": 1}), parked.start({"n": 1}, priority=5)
    finally:
        use_app(worker_app)
    sent = {body(m)[1]["run_id"]: m["properties"].get("priority")
            for m in broker_messages(NOBODY)}
    assert sent == {default.id: fresh_priority(0), urgent.id: fresh_priority(5)}
    assert fresh_priority(0) > fresh_priority(5) > continued_priority()  # Redis: lower first


def test_a_fused_start_runs_to_its_end(store, worker):
    assert wf.simple.start({"n": 4}).result(30) == {"n": 10}
