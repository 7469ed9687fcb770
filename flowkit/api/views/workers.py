"""``/workers``: the live workers, the steps they run, and routed queues nobody consumes.

The same presence data as ``flowkit workers`` and the doctor's queue check (workers'
heartbeat announcements and step leases in Redis), as JSON for the dashboard.
"""

from __future__ import annotations

import time

from flask import Blueprint
from flask_sock import Sock

from ...engine import control, doctor
from ..requests import access
from ..state import state


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/workers")(list_workers)


def list_workers():
    access().require_full("Workers run every owner's steps")
    current = state()
    live = sorted(control.live_workers(store=current.store), key=lambda w: w["name"])
    running = doctor.running_steps(store=current.store)
    default = control.default_queue()
    routed: dict[str, set[str]] = {}
    for wf in current.workflows():
        for queue in wf.queues(default):
            routed.setdefault(queue, set()).add(wf.name)
    unconsumed = [
        {"queue": q, "workflows": sorted(routed[q])} for q in control.unconsumed(set(routed), live)
    ]
    return {"workers": live, "running": running, "unconsumed": unconsumed, "now": time.time()}
