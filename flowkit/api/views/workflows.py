"""``/workflows``: the served workflows, and starting runs of them."""

from __future__ import annotations

import re
import time

from flask import Blueprint, jsonify, request, url_for
from flask_sock import Sock

from ...engine import control
from ...events import START
from ...numbers import LAST_TIME
from .. import schemas
from ..errors import ApiError
from ..relay import Subscriber
from ..representations import run_json, workflow_json
from ..requests import access, json_body, negotiated_stream, query, wait_seconds
from ..stalls import connection_socket
from ..state import state
from ..streaming import stream_response

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/workflows")(list_workflows)
    bp.get("/workflows/<name>")(get_workflow)
    bp.post("/workflows/<name>/runs")(start_run)


def list_workflows():
    access().require_caller()
    return {"workflows": [workflow_json(wf) for wf in state().workflows()]}


def get_workflow(name: str):
    access().require_caller()
    return workflow_json(state().workflow(name))


def start_run(name: str):
    current, who = state(), access()
    who.require_caller()
    wf = current.workflow(name)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(400, "validation_error", "Invalid Idempotency-Key header.", {
            # an empty header is refused, not read as none: a client whose key came out
            # empty would start a new run on every retry it meant to be the same
            "Idempotency-Key": ["1 to 255 visible ASCII characters; to start a run without "
                                "one, leave the header out."]})
    args = query(schemas.StartArgs)
    wait = wait_seconds(args.get("wait"))
    kind = negotiated_stream()
    body = json_body()
    wf.validate(body)  # marshmallow's field messages, then the published schema's
    start_at = args.get("start_at")
    if start_at is not None and start_at.timestamp() > LAST_TIME:
        # 9999-12-31T23:59-23:59 is a valid date-time the published schema cannot bound:
        # the year 10000 in UTC, past what flowkit can show; held to the last moment it can
        start_at = LAST_TIME
    holder = who.stream_holder if kind is not None or wait else None
    current.hub.acquire(holder)  # before the start: a refused start starts nothing
    connection = connection_socket(request.environ)  # looked at when the quota is full
    try:
        run = control.start(wf, body, idempotency_key=key, owner=who.owner,
                            store=current.store, start_at=start_at,
                            priority=args.get("priority", 0),
                            delay=None if "start_at" in args else args.get("delay"))
    except BaseException:
        current.hub.quota.release(holder)
        raise
    if not who.sees(run.owner):  # never another owner's: keys are per owner
        raise ApiError(403, "forbidden", "This run belongs to another owner.")
    token = current.auth.issue(run.id)
    headers = {"Location": url_for(f"{current.blueprint}.get_run", run_id=run.id),
               "X-Flowkit-Run": run.id, "X-Flowkit-Token": token}
    if kind is not None:
        return stream_response(current.hub.subscribe(run.id, START, holder=holder, counted=True,
                                                     connection=connection),
                               current.options.ping_interval, kind, headers=headers)
    created = run.created  # the start's own answer: the record read after a wait has none
    if wait:
        _await_end(current.hub.subscribe(run.id, START, holder=holder, counted=True,
                                         connection=connection), wait)
        run = control.get_run(run.id, store=current.store)
        headers["Preference-Applied"] = f"wait={wait:g}"
    body = {**run_json(run), "created": created, "token": token,
            "token_expires_in": current.options.token_ttl}
    status = 200 if run.done or not created else 202
    return jsonify(body), status, headers


def _await_end(sub: Subscriber, seconds: float) -> None:
    """Read the run's stream until its terminal event or until ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    with sub:
        while not sub.done:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sub.next_batch(timeout=left)
