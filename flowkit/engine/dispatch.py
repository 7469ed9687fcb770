"""Sending a run's messages from outside its canvas: the resume message that has a worker of
the run's own deployment enqueue its frontier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.exceptions import OperationalError

from ..errors import StoreUnavailable
from .broker import continued_priority, get_app


def send(publish: Callable[[], Any]) -> Any:
    """Publish to the broker (returns what ``publish`` does); a broker out of reach is
    StoreUnavailable (the run is stored: the reaper sends it again once
    FLOWKIT_QUEUED_TIMEOUT passes)."""
    try:
        return publish()
    except OperationalError as exc:
        raise StoreUnavailable(f"the Celery broker is unreachable: {exc}") from exc


def send_resume(run_id: str, gen: int, queue: str | None) -> None:
    """Ask a worker of the run's own queue to enqueue the frontier of generation ``gen``
    (it has the workflow version the run started with; this process may not)."""
    send(lambda: get_app().send_task(
        "flowkit.resume", kwargs={"run_id": run_id, "gen": gen}, queue=queue,
        priority=continued_priority()))
