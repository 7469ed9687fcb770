"""A concurrency key's limit changed by a deploy applies to the runs already in line.

Each run keeps its start's limit in its record: a raised limit admitted none of a
backlog started before it until a new run came, and a lowered one let that backlog go on
at the old limit until its line was empty. The runs here are on a queue no worker
consumes; ``monkeypatch`` gives the workflow the previous deployment's limit while they
start, as that code did.
"""

from __future__ import annotations

import flowkit
from flowkit import component
from flowkit.engine import admission

NOWHERE = "no-worker-consumes-this"


@component(name="t.limit_change_step")
def limit_change_step(data: dict) -> dict:
    return data


deployed = flowkit.Workflow("t.limit_changes", [limit_change_step], queue=NOWHERE,
                            concurrency=flowkit.Concurrency(limit=3, key="tenant"))


def started_under(monkeypatch, limit: int, count: int) -> list[flowkit.Run]:
    """``count`` runs started by code whose limit was ``limit``; the code is ours again."""
    with monkeypatch.context() as before:
        before.setattr(deployed, "concurrency", flowkit.Concurrency(limit=limit, key="tenant"))
        return [deployed.start({"tenant": "acme"}) for _ in range(count)]


def held(runs: list[flowkit.Run]) -> list[bool]:
    return [bool(flowkit.get_run(run.id).held_for) for run in runs]


def test_a_raised_limit_admits_the_runs_in_line_at_the_next_sweep(store, monkeypatch):
    runs = started_under(monkeypatch, 1, 4)
    assert held(runs) == [False, True, True, True]
    assert admission.reconcile(store) == [runs[1].id, runs[2].id]  # beat's sweep
    assert held(runs) == [False, False, False, True]


def test_a_lowered_limit_admits_no_run_of_the_line_until_the_active_are_under_it(
        store, monkeypatch):
    runs = started_under(monkeypatch, 5, 7)
    assert held(runs) == [False] * 5 + [True] * 2
    admission.released(runs[0].id, store)  # a run ends: 4 active, over the new limit 3
    assert held(runs)[5:] == [True, True]
    for run in runs[1:3]:
        admission.released(run.id, store)  # 2 active: the first in line gets the third slot
    assert held(runs)[5:] == [False, True]
