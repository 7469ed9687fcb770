"""Failure notifications: ``hooks.run_failed`` callables, once per failed run."""

from __future__ import annotations

import logging

from . import hooks
from .run import Run
from .store import get_store

log = logging.getLogger(__name__)


def run_failed(run_id: str) -> None:
    store = get_store()
    if not store.redis.set(store.keys.lock(f"notified:{run_id}"), 1, nx=True,
                           ex=store.settings.retention_seconds):
        return
    hooks.call(hooks.run_failed, Run.load(run_id, store))
