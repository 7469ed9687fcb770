"""Failure notifications: a Python hook list and an optional webhook, once per failed run."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .run import Run
from .store import get_store

log = logging.getLogger(__name__)

#: Callables ``hook(run)`` called once when a run fails (by a step or by the reaper).
on_failure: list[Callable[[Run], None]] = []


def run_failed(run_id: str) -> None:
    store = get_store()
    if not store.redis.set(store.keys.lock(f"notified:{run_id}"), 1, nx=True,
                           ex=store.settings.retention_seconds):
        return
    run = Run.load(run_id, store)
    for hook in list(on_failure):
        try:
            hook(run)
        except Exception:
            log.exception("flowkit failure hook %r raised", hook)
