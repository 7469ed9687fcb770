"""``/runs/summary?ids=a,b``: what a runs list shows of each run beyond its record: step
progress and tokens (from the run's events) and cost (from its trace's LLM calls).

The run record keeps neither, so the dashboard asks for the rows it shows, and only again
for runs still going; each run is checked against the caller's access like any read.
The dashboard asks every 1.5 s while a run goes on, and a run streaming an LLM's tokens
has thousands of events: this process keeps each recent run's fold with the id of the
last event it folded (:class:`Folds`) and reads only the events after it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request
from flask_sock import Sock

from ... import events as run_events
from ...engine import control
from ...errors import ValidationError
from ..errors import ApiError
from ..state import state
from .runs import load_run

#: Most runs one request summarises (a page of the dashboard's list).
MOST = 100


def register(bp: Blueprint, sock: Sock) -> None:
    bp.get("/runs/summary")(summarise)


def summarise():
    # each id once (and as the run's own id: a key with blanks would be another row)
    ids = list(dict.fromkeys(i.strip() for i in request.args.get("ids", "").split(",")
                             if i.strip()))
    if not ids or len(ids) > MOST:
        raise ApiError(
            400,
            "validation_error",
            "Invalid query parameters.",
            {"ids": [f"1 to {MOST} comma-separated run ids."]},
        )
    # an id in any case is its run (answered under the id as asked)
    return {"runs": {run_id: summary(load_run(control.canonical_run_id(run_id)).id)
                     for run_id in ids}}


@dataclass
class Fold:
    """What a run's events said so far, up to the event ``cursor``."""

    cursor: str = run_events.START
    steps: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def add(self, event: run_events.Event) -> None:
        step = event.data.get("step")
        if event.type == "step.started" and step:
            self.steps[step] = "running"
        elif event.type in ("step.completed", "step.failed") and step:
            self.steps[step] = event.type[5:]
            for kind, used in (event.data.get("tokens") or {}).items():
                if isinstance(used, int):
                    self.tokens[kind] = self.tokens.get(kind, 0) + used
        self.cursor = event.id


class Folds:
    """The folds of the ``most`` runs summarised last (a fan-out's fold holds a status per
    item, so they are bounded); a run's events only ever grow, so a fold read on from its
    cursor equals one read from the start."""

    def __init__(self, most: int = 2 * MOST) -> None:
        self.most = most
        self._folds: OrderedDict[str, Fold] = OrderedDict()
        self._lock = threading.Lock()

    def kept(self) -> list[str]:
        """The runs whose folds are kept, least recently summarised first."""
        with self._lock:
            return list(self._folds)

    def of(self, run_id: str, store) -> Fold:
        with self._lock:
            kept = self._folds.get(run_id)
            fold = Fold(kept.cursor, dict(kept.steps), dict(kept.tokens)) if kept else Fold()
        refolded = False
        try:
            found = control.history(run_id, after=fold.cursor, store=store)
        except ValidationError:  # the kept cursor is past the run's end now (a failover
            # lost the stream's tail): folded again from the start, not a 400 for good
            fold, found, refolded = Fold(), control.history(run_id, store=store), True
        for event in found:
            fold.add(event)
        with self._lock:
            kept = self._folds.get(run_id)
            if kept is None or refolded or run_events.cursor_order(
                    kept.cursor) <= run_events.cursor_order(fold.cursor):
                self._folds[run_id] = fold
            self._folds.move_to_end(run_id)
            while len(self._folds) > self.most:
                self._folds.popitem(last=False)
        return fold


#: This process's folds.
folds = Folds()


def summary(run_id: str) -> dict[str, Any]:
    store = state().store
    fold = folds.of(run_id, store)
    steps, tokens = fold.steps, fold.tokens
    costs = [
        s["cost"]
        for s in control.trace(run_id, store=store)
        if isinstance(s.get("cost"), (int, float)) and not s.get("cached")  # paid once
    ]
    return {
        "steps": len(steps),
        "completed": sum(1 for s in steps.values() if s == "completed"),
        "tokens": tokens,
        "cost": round(sum(costs), 6) if costs else None,
    }
