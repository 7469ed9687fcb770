"""Task messages and results are plain JSON both ways (``engine.broker.SERIALIZER``).

kombu's own ``json`` read any ``{"__type__": T, "__value__": v}`` object as a Python
object: a run's input holding one reached its step as bytes, a datetime or a Decimal, past
the workflow's schema, or made the whole message undecodable (the worker logged "Can't
decode message body" and dropped it: the run stayed queued, saying nothing)."""

from __future__ import annotations

import base64
import json

import pytest
from kombu.utils import json as kombu_json

import flowkit
from flowkit.engine.broker import CONTENT_TYPE, get_app
from tests.test_publish import broker_messages

pytestmark = pytest.mark.integration

WAIT = 30
#: Objects kombu's json decoded into Python objects (bytes, datetime, Decimal) or could not
#: decode at all (uuid with a string, an unknown type).
TAGGED = {
    "bytes": {"__type__": "bytes", "__value__": "aGk="},
    "datetime": {"__type__": "datetime", "__value__": "2026-01-01T00:00:00"},
    "decimal": {"__type__": "decimal", "__value__": "2.5"},
    "uuid": {"__type__": "uuid", "__value__": "12345678-1234-5678-1234-567812345678"},
    "set": {"__type__": "set", "__value__": [1]},
}
NOBODY = "wire-nobody"


@flowkit.component(name="wire.types")
def types_of(data: dict) -> dict:
    return {"types": {k: type(v).__name__ for k, v in data["values"].items()},
            "values": data["values"]}


@flowkit.component(name="wire.tagged_items")
def tagged_items(data: dict) -> list:
    return list(TAGGED.values())


@flowkit.component(name="wire.item_type")
def item_type(item: object) -> str:
    return type(item).__name__


typed = flowkit.Workflow("wire.typed", [types_of])
fanned = flowkit.Workflow("wire.fanned", [tagged_items, flowkit.fan_out(item_type)])
parked = flowkit.Workflow("wire.parked", [types_of], queue=NOBODY)


def test_tagged_objects_in_a_run_s_input_reach_its_step_as_the_json_sent(worker):
    run = typed.start({"values": TAGGED})
    output = run.result(WAIT)  # the uuid and set ones no longer leave the run queued
    assert output["types"] == dict.fromkeys(TAGGED, "dict")
    assert output["values"] == TAGGED


def test_tagged_objects_a_step_returns_reach_its_fan_out_items_as_the_json_sent(worker):
    assert fanned.start({}).result(WAIT) == ["dict"] * len(TAGGED)


def test_step_messages_go_out_as_flowkit_json(store):
    conn = get_app().connection_for_write()
    conn.default_channel.queue_purge(NOBODY)
    try:
        parked.start({"values": {}})
        [envelope] = broker_messages(NOBODY)
        assert envelope["content-type"] == CONTENT_TYPE
    finally:
        conn.default_channel.queue_purge(NOBODY)
        conn.release()


def test_a_message_an_earlier_release_sent_as_kombu_json_still_runs(worker, store):
    """A rolling deploy: messages of the release before, sent with kombu's ``json``, wait in
    the queues while the new workers start; they accept it (``broker.ACCEPTED``)."""
    conn = get_app().connection_for_write()
    client = conn.default_channel.client
    conn.default_channel.queue_purge(NOBODY)
    try:
        run = parked.start({"values": {"n": 1}})
        [key] = [k for k in client.keys(f"{NOBODY}*") if k.decode().startswith(NOBODY)]
        envelope = json.loads(client.lpop(key))
        task_body = json.loads(base64.b64decode(envelope["body"]))
        envelope["body"] = base64.b64encode(kombu_json.dumps(task_body).encode()).decode()
        envelope["content-type"] = "application/json"  # as kombu's json serializer sends it
        # onto the queue the session's worker consumes, at the same priority
        client.lpush(key.replace(NOBODY.encode(), b"flowkit", 1), json.dumps(envelope))
        assert run.result(WAIT) == {"types": {"n": "int"}, "values": {"n": 1}}
    finally:
        conn.default_channel.queue_purge(NOBODY)
        conn.release()


def test_settings_that_move_the_broker_after_the_app_was_made_are_said(worker, monkeypatch,
                                                                       caplog):
    """``flowkit.configure(redis_url=...)`` after the app was made moved the store alone,
    silently: the app's messages went on to the first Redis (a test's steps ran on the
    developer's own ``flowkit dev`` worker)."""
    from flowkit import config

    elsewhere = config.get_settings().replace(broker_url="redis://127.0.0.1:1/0")
    monkeypatch.setattr(config, "_settings", elsewhere)
    with caplog.at_level("WARNING", logger="flowkit.engine.broker"):
        app = get_app()
        get_app()  # said once per change
    said = [r.getMessage() for r in caplog.records if "still sends there" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("flowkit: the settings name the broker redis://127.0.0.1:1/0, "
                              f"but the Celery app {app.main!r} was made with redis://")
