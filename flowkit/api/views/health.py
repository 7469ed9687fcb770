"""``/healthz``: Redis reachable, and the workers that beat recently (no credentials)."""

from __future__ import annotations

import time

from flask import Blueprint
from flask_sock import Sock

from ...errors import StoreUnavailable
from ...store import get_store
from ..errors import ApiError


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/healthz")(healthz)


def healthz():
    store = get_store()
    settings = store.settings
    recent = time.time() - max(settings.heartbeat_lapse, 3 * settings.heartbeat_interval)
    try:
        workers = len(store.workers_seen_since(recent))
    except StoreUnavailable:
        raise ApiError(503, "redis_unreachable", "Redis does not answer.") from None
    return {"status": "ok", "redis": True, "workers": workers}
