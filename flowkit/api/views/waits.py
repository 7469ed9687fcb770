"""Answering paused runs: input for a run's wait, events for every run waiting on a key."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask_sock import Sock
from werkzeug.routing import PathConverter

from ...engine import control
from .. import schemas
from ..representations import run_json
from ..requests import access, json_body, query
from ..state import state
from .runs import load_run


class EventKey(PathConverter):
    """An event key: any text, slashes and newlines too (``path`` refuses a newline: 404),
    a leading slash too (``%2Fpay:5``): refused, the router merged it away and answered a
    308 to the key without it, an HTML page that a client following redirects took to
    another key's runs (or another input)."""

    regex = "/*[^/](?s:.)*?"


def register(bp: Blueprint, sock: Sock) -> None:
    # before the route below is added: the blueprint's deferred functions run in order
    bp.record_once(lambda setup: setup.app.url_map.converters.setdefault("event_key", EventKey))
    # any text, so that a name with a '/' (%2F) meets the name's rule, not the routing 404
    bp.post("/runs/<run_id>/input/<event_key:name>")(send_input)
    bp.post("/events/<event_key:key>")(send_event)


def send_input(run_id: str, name: str):
    """The JSON body is the value; a run token may answer its own run (its page's form).
    ``?step=`` names the step whose wait it answers (several may wait under one name)."""
    current = state()
    load_run(run_id, write=True, answer=True)
    step = query(schemas.InputArgs).get("step")
    delivery = control.send_input(run_id, name, json_body(), store=current.store, step=step)
    run = control.get_run(run_id, store=current.store)
    status = 200 if delivery.outcome == "same" else 202
    return jsonify({"outcome": delivery.outcome.value, "run": run_json(run)}), status


def send_event(key: str):
    access().require_full(
        "An event wakes every run waiting on its key, whatever its owner")
    woken = control.send_event(key, json_body(), store=state().store)
    return jsonify({"woken": woken}), 202
