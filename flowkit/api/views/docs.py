"""The OpenAPI document and the watch page."""

from __future__ import annotations

from flask import Blueprint, current_app
from flask_sock import Sock

from ..openapi import build_spec
from ..requests import access
from ..state import state


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/openapi.json")(openapi)
    bp.get("/runs/<run_id>/watch")(watch)


def openapi():
    access().require_full()
    return build_spec(state())


def watch(run_id: str):
    return current_app.blueprints[state().blueprint].send_static_file("watch.html")
