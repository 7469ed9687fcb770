"""Flow control with real worker and beat processes: a busy tenant does not hold up
another, a SIGKILLed worker leaks no slot, two beats fire each schedule tick once, and a
component's concurrency and rate hold across two worker processes."""

from __future__ import annotations

import time

import pytest

import flowkit
from flowkit.serialization import loads
from flowkit.store import get_store
from tests.chaos.conftest import open_gate, wait_for, waiting
from tests.chaos.workflows import crawl, pinging, tenant_held, tenants

WAIT = 60


def seen(tenant: str) -> list[dict]:
    return [loads(x) for x in get_store().redis.lrange(f"chaos:seen:{tenant}", 0, -1)]


@pytest.mark.long  # it mostly waits: beside the rest (the fast tier neared 15 min)
def test_a_tenant_with_300_runs_in_line_does_not_delay_another(chaos_app, deployment):
    deployment.worker("a")
    deployment.worker("b")
    busy = [tenants.start({"tenant": "A"}) for _ in range(300)]
    began = time.time()
    other = tenants.start({"tenant": "B"})
    assert other.wait(WAIT).state == "succeeded"
    [first_step] = seen("B")
    # behind A's line (300 runs, 2 at a time) it would wait minutes; 2 s leaves room for
    # a loaded machine
    assert first_step["at"] - began < 2.0, "B's first step began more than 2 s after its start"
    for run in busy:
        assert run.wait(120).state == "succeeded"
    marks = seen("A")
    assert len(marks) == 300
    assert max(m["inside"] for m in marks) == 2  # never more than the limit, and it was used
    assert max(m["holding"] for m in marks) <= 2
    held = [r for r in busy if "run.held" in [e.type for e in r.events()]]
    assert len(held) >= 290  # all but the first few waited in Redis, not in the broker
    store = get_store()
    wait_for(lambda: store.redis.zcard(store.keys.slots("chaos.tenants:A")[0]) == 0, 10,
             "the last slot given back")


@pytest.mark.parametrize("max_restarts", ["3", "0"], ids=["restarted", "given-up"])
def test_a_sigkilled_slot_holder_leaks_no_slot(chaos_app, deployment, max_restarts):
    env = {"FLOWKIT_MAX_RESTARTS": max_restarts}
    doomed = deployment.worker("doomed", **env)
    first = [tenant_held.start({"n": 0, "tenant": "T", "chunks": 0}) for _ in range(2)]
    for run in first:
        waiting(run)  # both hold their step on the doomed worker
    line = [tenant_held.start({"n": 0, "tenant": "T", "chunks": 0}) for _ in range(2)]
    store = get_store()
    active = store.keys.slots("chaos.tenant_held:T")[0]
    assert set(store.redis.zrange(active, 0, -1)) == {r.id for r in first}
    doomed.kill()
    deployment.worker("survivor", **env)
    deployment.beat(**env)
    if max_restarts == "0":  # the reaper gives the runs up: their slots go to the line
        assert [r.wait(WAIT).state for r in first] == ["failed", "failed"]
    else:  # restarted elsewhere, they keep their slots; the line still waits
        for run in first:
            assert waiting(run, timeout=WAIT)["worker"].startswith("survivor@")
        assert set(store.redis.zrange(active, 0, -1)) == {r.id for r in first}
        assert [flowkit.get_run(r.id).state for r in line] == ["queued", "queued"]
        for run in first:
            open_gate(run)
            assert run.wait(WAIT).state == "succeeded"
    for run in line:
        waiting(run, timeout=WAIT)
        open_gate(run)
        assert run.wait(WAIT).state == "succeeded"
    # a run is succeeded a moment before its worker gives the slot back
    wait_for(lambda: store.redis.zcard(active) == 0, 10, "the last slot given back")


@pytest.mark.long  # mostly idle waiting: beside the rest (scripts/test)
def test_two_beats_fire_each_tick_of_a_schedule_once(chaos_app, deployment):
    deployment.worker("a")
    schedule = flowkit.schedules.create("chaos.tick", every=1, input={"n": 0, "chunks": 0},
                                        id="every-1s")
    first_tick = schedule["next_at"]
    deployment.beat()
    deployment.beat()
    #: 20 ticks, each fired by whichever beat claims it first
    later = first_tick + 20

    def fired() -> list[flowkit.Run]:
        return [r for r in flowkit.list_runs(workflow="chaos.tick", limit=1000)
                if r.idempotency_key.startswith("schedule:every-1s:")]

    wait_for(lambda: time.time() > later + 2 and fired(), 50, "20 seconds of ticks")
    flowkit.schedules.delete("every-1s")
    for beat in deployment.beats:
        beat.kill()
    runs = fired()
    ticks = sorted(float(r.idempotency_key.rpartition(":")[2]) for r in runs)
    assert len(ticks) == len(set(ticks)) == len(runs)  # one run per tick
    assert ticks[0] == pytest.approx(first_tick, abs=1e-3)
    assert [round(b - a, 3) for a, b in zip(ticks, ticks[1:], strict=False)] == [1.0] * (len(ticks) - 1)
    assert len(ticks) >= 20  # every tick of the 20 seconds
    assert all(r.wait(WAIT).state == "succeeded" for r in runs)


def test_beat_stores_the_schedules_its_code_declares_when_it_starts(chaos_app, deployment):
    assert flowkit.schedules.list() == []
    deployment.beat()  # tests.chaos.workflows declares chaos-yearly on chaos.yearly
    wait_for(lambda: flowkit.schedules.list(), 30, "beat to store the declared schedule")
    [stored] = flowkit.schedules.list()
    assert stored["id"] == "chaos-yearly" and stored["declared"] and not stored["paused"]
    assert (stored["workflow"], stored["cron"], stored["input"]) == \
        ("chaos.yearly", "0 0 1 1 *", {"n": 0})


def peak(marks: list[dict]) -> int:
    level = top = 0
    for mark in sorted(marks, key=lambda m: (m["at"], m["d"])):
        level += mark["d"]
        top = max(top, level)
    return top


def test_a_components_concurrency_holds_across_two_worker_processes(chaos_app, deployment):
    deployment.worker("a")
    deployment.worker("b")
    deployment.consuming("a", "b")
    runs = [crawl.start({"domains": ["x.example", "y.example"], "per_domain": 6}) for _ in range(2)]
    assert [r.wait(WAIT).state for r in runs] == ["succeeded", "succeeded"]
    r = get_store().redis
    for domain in ("x.example", "y.example"):
        marks = [loads(m) for m in r.lrange(f"chaos:pages:{domain}", 0, -1)]
        assert len(marks) == 24
        assert peak(marks) == 3, f"{domain}: at most 3 at once, and 3 did run together"
        assert {m["worker"].split("@")[0] for m in marks} == {"a", "b"}


def test_a_components_rate_holds_across_two_worker_processes(chaos_app, deployment):
    deployment.worker("a")
    deployment.worker("b")
    deployment.consuming("a", "b")
    run = pinging.start({"domains": ["p"], "per_domain": 40})
    assert run.wait(WAIT).state == "succeeded"
    pings = sorted((loads(p) for p in get_store().redis.lrange("chaos:pings", 0, -1)),
                   key=lambda p: p["at"])
    assert len(pings) == 40 and {p["worker"].split("@")[0] for p in pings} == {"a", "b"}
    at = [p["at"] for p in pings]
    # a bucket of 10, refilled at 10/s: no stretch of starts beats burst + rate * its length
    worst = max(j - i + 1 - 10 * (at[j] - at[i]) for i in range(40) for j in range(i, 40))
    assert worst <= 10 + 1
    busiest_second = max(sum(1 for t in at if s <= t < s + 1) for s in at)
    assert 10 <= busiest_second <= 20
    assert at[-1] - at[0] >= 2.5  # 40 starts at 10/s after a burst of 10 take 3 s
