"""``/runs/summary?ids=a,b``: what a runs list shows of each run beyond its record: step
progress and tokens (from the run's events) and cost (from its trace's LLM calls).

The run record keeps neither, so the dashboard asks for the rows it shows, and only again
for runs still going; each run is checked against the caller's access like any read.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request
from flask_sock import Sock

from ...engine import control
from ..errors import ApiError
from ..state import state
from .runs import load_run

#: Most runs one request summarises (a page of the dashboard's list).
MOST = 100


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/runs/summary")(summarise)


def summarise():
    ids = [i for i in request.args.get("ids", "").split(",") if i.strip()]
    if not ids or len(ids) > MOST:
        raise ApiError(
            400,
            "validation_error",
            "Invalid query parameters.",
            {"ids": [f"1 to {MOST} comma-separated run ids."]},
        )
    return {"runs": {run_id: summary(load_run(run_id.strip()).id) for run_id in ids}}


def summary(run_id: str) -> dict[str, Any]:
    store = state().store
    steps: dict[str, str] = {}
    tokens: dict[str, int] = {}
    for event in control.history(run_id, store=store):
        step = event.data.get("step")
        if event.type == "step.started" and step:
            steps[step] = "running"
        elif event.type in ("step.completed", "step.failed") and step:
            steps[step] = event.type[5:]
            for kind, used in (event.data.get("tokens") or {}).items():
                if isinstance(used, int):
                    tokens[kind] = tokens.get(kind, 0) + used
    costs = [
        s["cost"]
        for s in control.trace(run_id, store=store)
        if isinstance(s.get("cost"), (int, float))
    ]
    return {
        "steps": len(steps),
        "completed": sum(1 for s in steps.values() if s == "completed"),
        "tokens": tokens,
        "cost": round(sum(costs), 6) if costs else None,
    }
