"""``/runs``: listing runs, one run's record, output and trace, cancelling and retrying,
and a fresh run token for a run (what a page following it over a WebSocket needs: a
browser's socket carries its credential in the URL, where an API key must never go)."""

from __future__ import annotations

from flask import Blueprint
from flask_sock import Sock

from ...engine import control
from ...states import RunState
from .. import schemas
from ..auth import RUN
from ..errors import ApiError
from ..representations import run_json
from ..requests import access, query
from ..state import state


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/runs")(list_runs)
    bp.get("/runs/<run_id>")(get_run)
    bp.get("/runs/<run_id>/output")(get_output)
    bp.get("/runs/<run_id>/trace")(get_trace)
    bp.post("/runs/<run_id>/cancel")(cancel_run)
    bp.post("/runs/<run_id>/retry")(retry_run)
    bp.post("/runs/<run_id>/token")(new_token)


def load_run(run_id: str, write: bool = False, answer: bool = False) -> control.Run:
    """The run, if the caller may see it (or change it, with ``write``; or answer its
    waits, with ``answer``: a run token may, for its own run)."""
    who, store = access(), state().store
    who.require_run(control.canonical_run_id(run_id), write=write, answer=answer)
    run = control.Run.load(run_id, store)
    if not who.sees(run.owner):  # before reading why it waits: as fast as a missing one
        raise control.not_found(run_id)
    return control.say_why_it_waits(run, store)


def list_runs():
    current, who = state(), access()
    who.require_caller()
    args = query(schemas.ListRunsArgs)
    limit = args.get("limit", current.options.page_size)
    if limit > current.options.max_page_size:
        raise ApiError(400, "validation_error", "Invalid query parameters.",
                       {"limit": [f"At most {current.options.max_page_size} runs a page "
                                  "(FLOWKIT_API_MAX_PAGE_SIZE): follow `next` for more."]})
    owner = args.get("owner")
    if who.owner is not None:  # a credential of one owner lists that owner's runs only
        if owner not in (None, who.owner):
            return {"runs": [], "next": None}
        owner = who.owner
    page = control.list_runs(args.get("workflow"), args.get("state"), limit, args.get("before"),
                             store=current.store, owner=owner)
    cursor = page[-1].id if len(page) == limit else None
    return {"runs": [run_json(r) for r in page], "next": cursor}


def get_run(run_id: str):
    return run_json(load_run(run_id))


def get_output(run_id: str):
    run = load_run(run_id)
    if run.state != RunState.SUCCEEDED:
        detail = f": {run.error.get('message')}" if run.error else ""
        raise ApiError(409, "no_output", f"Run {run.id} is {run.state}{detail}; "
                       "only a succeeded run has an output.")
    return {"output": run.output}


def get_trace(run_id: str):
    load_run(run_id)
    return {"spans": control.trace(run_id, store=state().store)}


def cancel_run(run_id: str):
    load_run(run_id, write=True)
    return run_json(control.cancel(run_id, store=state().store))


def new_token(run_id: str):
    if access().kind == RUN:  # one token making the next would never expire
        raise ApiError(403, "forbidden", "A run token cannot make another: ask the app that "
                       "gave it for a fresh one (the JS client's `token` as a function).")
    run = load_run(run_id)
    current = state()
    body = {"run_id": run.id, "token": current.auth.issue(run.id),
            "token_expires_in": current.options.token_ttl}
    return body, 200, {"Cache-Control": "no-store"}


def retry_run(run_id: str):
    run = load_run(run_id, write=True)
    state().workflow(run.workflow)
    return run_json(control.retry(run_id, store=state().store)), 202
