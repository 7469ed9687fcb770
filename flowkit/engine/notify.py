"""Failure notifications, once per failure of a run (a retried run that fails again is
notified again): ``hooks.run_failed`` callables and a webhook.

Whoever fails a run (a worker whose step gave up, the reaper giving up) calls
:func:`run_failed`; a claim in Redis makes the notification happen once even when
several processes race. FLOWKIT_FAILURE_WEBHOOK, when set, receives a JSON POST
(:func:`webhook_payload`); a webhook that is down is logged, not retried.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from typing import Any

from .. import hooks
from ..config import get_settings
from ..errors import RunNotFound
from ..serialization import dumps
from ..store import get_store
from . import trace
from .control import Run

log = logging.getLogger(__name__)


def run_failed(run_id: str) -> None:
    store = get_store()
    ended_at, = store.run_fields(run_id, "finished_at")
    if not ended_at or not store.claim_failure_notice(run_id, ended_at):
        return  # retried (or gone) meanwhile, or this end's notice was claimed
    try:
        run = Run.load(run_id)
    except RunNotFound:  # deleted (or expired) since it failed: no one is left to tell
        log.info("flowkit: run %s failed and is gone; nothing to notify", run_id)
        return
    trace.run_ended(run_id, get_store())  # the root span, once, by whoever failed the run
    hooks.call(hooks.run_failed, run)
    url = get_settings().failure_webhook
    if url:
        post_webhook(url, webhook_payload(run))


def webhook_payload(run: Run) -> dict[str, Any]:
    """What the webhook receives: the failure, never the run's input or output."""
    return {
        "type": "run.failed",
        "run_id": run.id,
        "workflow": run.workflow,
        "version": run.version,
        "state": run.state,
        "failed_step": run.failed_step,
        "error": run.error,
        "restarts": run.restarts,
        "finished_at": run.finished_at,
    }


def post_webhook(url: str, payload: dict[str, Any]) -> bool:
    """POST ``payload`` as JSON; True on a 2xx answer. Never raises: failing a run must go on."""
    request = urllib.request.Request(
        url, data=dumps(payload).encode(), method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "flowkit"},
    )
    try:
        with urllib.request.urlopen(request, timeout=get_settings().failure_webhook_timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("flowkit: failure webhook %s for run %s failed: %s", url, payload["run_id"], exc)
        return False
