"""``/healthz``: what the web process can see of the deployment (no credentials).

Anyone gets the status (a load balancer's probe needs no more); the details, live
workers (hostnames, pids, queues) and problems (naming workflows and queues), go only to
a caller with full access (:attr:`flowkit.api.auth.Access.full`): they map the deployment.

``ok`` when Redis answers and every queue a served workflow routes to has a live
consumer; ``degraded`` (still 200: this process serves) when no worker is alive, a queue
has none, the reaper found a worker whose consumer takes nothing from a queue where
messages wait (flowkit.engine.consumers), the workers take steps from another broker
than this process sends them to, or beat's reaper has not swept within three of its
intervals (at least 30 s), with a ``problems`` list saying which; 503 with ``Retry-After`` when
Redis does not answer within FLOWKIT_API_REDIS_RETRY_SECONDS.
"""

from __future__ import annotations

import logging
import time

from flask import Blueprint, request
from flask_sock import Sock

from ...engine import consumers, control, doctor
from ..state import ApiState, state

log = logging.getLogger(__name__)


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/healthz")(healthz)


def healthz():
    current = state()
    workers = control.live_workers(current.store)  # a Redis outage answers 503 (errors.py)
    problems = [] if workers else [control.no_worker(current.store)]
    if workers:
        default = control.default_queue()
        for wf in current.workflows():
            for queue in control.unconsumed(wf.queues(default), workers):
                problems.append(f"no live worker consumes queue {queue} (workflow {wf.name})")
            for queue in control.undefined_on(wf.name, wf.queues(default), workers):
                problems.append(f"no live worker of queue {queue} defines workflow {wf.name} "
                                "(its workers' app does not import it): its steps are dropped")
        problems += consumers.reported(current.store)
        # the workers take steps from another broker (database, vhost, kind) than this
        # process sends them to: its runs wait, queued, for the reaper (it said "ok")
        problems += [f"{f.message} {f.fix}" for f in doctor.same_broker(
            current.store.settings.broker, workers) if f.level == doctor.FAILURE]
        # beat down: no crashed run is restarted, no timer, delayed start or schedule fires,
        # and it said "ok" while runs sat overdue with no reason given
        problems += [f"{f.message} {f.fix}" for f in doctor.beat(
            current.store.last_sweep(), time.time()) if f.level == doctor.FAILURE]
    status = {"status": "degraded" if problems else "ok", "redis": True}
    if not _full_access(current):
        return status
    now = time.time()
    return {
        **status,
        "workers": [{**w, "seconds_since_beat": round(now - w["last_beat"], 3)}
                    for w in workers],
        "problems": problems,
    }


def _full_access(current: ApiState) -> bool:
    """Whether the caller's credentials grant everything. A probe sends none: the host
    app's ``authorize`` is then not asked (a probe must not fail with it), and whatever it
    raises only means no details: the probe answers anyone."""
    sent = (request.headers.get("Authorization") or request.args.get("token")
            or request.headers.get("Cookie"))
    if not sent and not current.options.open:
        return False
    try:
        return current.auth.authenticate(request).full
    except Exception as exc:  # noqa: BLE001 - a refusal, or the host app's callback failing
        log.debug("flowkit /healthz: no details for this caller (%r)", exc)
        return False
