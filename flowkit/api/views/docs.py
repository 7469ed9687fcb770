"""The OpenAPI document and the watch page."""

from __future__ import annotations

from flask import Blueprint, current_app
from flask_sock import Sock

from ..openapi import build_spec
from ..requests import access
from ..state import state
from .ui import PAGE_POLICY


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/openapi.json")(openapi)
    bp.get("/runs/<run_id>/watch")(watch)


def openapi():
    access().require_caller()
    api = state()
    served = tuple((wf.name, id(wf)) for wf in api.workflows())
    cached = api.spec
    if cached is None or cached[0] != served:  # built once per set of served workflows
        cached = api.spec = (served, build_spec(api))
    return cached[1]


def watch(run_id: str):
    page = current_app.blueprints[state().blueprint].send_static_file("watch.html")
    # its URL holds the run token: not to be sent on as the Referer of what it loads
    page.headers["Referrer-Policy"] = "no-referrer"
    # framing stays allowed: an app may embed a run's page in its own (the token in its URL
    # is the only credential it uses, so a frame gains a clickjacker nothing)
    page.headers["Content-Security-Policy"] = PAGE_POLICY
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page
