"""The lease keeper (flowkit.engine.keeper): a step that holds its process's GIL for longer
than the lapse keeps its lease, on every pool; a worker's keeper goes with its worker."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from flowkit import config
from flowkit.engine.processes import children_of, process_state
from flowkit.store import get_store
from flowkit.store.keys import shard_of
from tests.chaos.conftest import of_type, open_gate, side_effects, waiting
from tests.chaos.workflows import held, held_gil
from tests.conftest import wait_until

GIL = "1:chaos.gil"


def keepers_of(pid: int) -> list[int]:
    """The lease keeper processes ``pid`` started (their parent is ``pid``)."""
    found = []
    for child in children_of(pid):
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
            if b"from flowkit.engine.keeper import main" in f.read():
                found.append(child)
    return found


@pytest.mark.long  # mostly waiting out three lapses: beside the rest (scripts/test)
@pytest.mark.parametrize("pool", ["prefork", "gevent"])
def test_a_step_holding_the_gil_past_the_lapse_keeps_its_lease(chaos_app, deployment, pool):
    """Its worker's own heartbeat thread (a greenlet on gevent) cannot run for three lapses:
    the keeper beats the lease, so the reaper, sweeping all along, leaves the step alone and
    it runs once."""
    lapse = config.get_settings().heartbeat_lapse
    deployment.worker("a", pool=pool, concurrency=2)
    # the reaper's sweeps run on a worker of their own (every worker takes them): a frozen
    # gevent worker would run none of them until its step returned
    deployment.worker("sweeper", queues=("chaos-none",))
    deployment.beat()
    run = held_gil.start({"n": 0, "chunks": 1, "pause": 0.01, "seconds": 3 * lapse})
    done = run.wait(3 * lapse + 60)
    assert done.state == "succeeded", done
    assert of_type(run.events(), "run.restarted") == []
    assert side_effects(run, "started")[GIL] == 1


@pytest.mark.long  # mostly waiting out a stall: beside the rest (scripts/test)
def test_a_worker_wedged_past_the_stall_loses_its_lease(chaos_app, deployment):
    """The keeper beats a live process's leases, but not for ever: one whose own heartbeat
    thread has not run for FLOWKIT_HEARTBEAT_STALL (a C call that never gives the GIL back)
    is wedged, and its step goes to another worker, as it did before the keeper."""
    a = deployment.worker("a", FLOWKIT_HEARTBEAT_STALL="3")
    run = held_gil.start({"n": 0, "chunks": 1, "pause": 0.01, "seconds": 60, "first_only": True})
    wait_until(lambda: side_effects(run, "started").get(GIL), 20, "the GIL step to begin")
    deployment.worker("b")
    deployment.beat()
    done = run.wait(30)
    assert done.state == "succeeded", done
    [restarted] = of_type(run.events(), "run.restarted")
    assert GIL in restarted.data["reason"]
    assert any("(FLOWKIT_HEARTBEAT_STALL): its leases lapse" in line for line in a.lines), \
        a.output()[-3000:]


@pytest.mark.long  # mostly waiting out a lapse: beside the rest (scripts/test)
def test_a_sigkilled_worker_s_keeper_exits_and_its_step_lapses(chaos_app, deployment):
    """The keeper beats only for live processes: the worker SIGKILLed mid-step, its keeper
    hears the end of its pipe and exits, and the step's lease lapses as it always did."""
    worker = deployment.worker("a")
    run = held_gil.start({"n": 0, "chunks": 1, "pause": 0.01, "seconds": 60})
    wait_until(lambda: side_effects(run, "started").get(GIL), 20, "the GIL step to begin")
    keepers = keepers_of(worker.proc.pid)
    assert len(keepers) == 1, keepers
    os.kill(worker.proc.pid, signal.SIGKILL)  # the worker alone, not its process group
    worker.proc.wait(10)
    wait_until(lambda: process_state(keepers[0]) in ("X", "Z"), 10, "the keeper to exit")
    store = get_store()
    leases = store.keys.leases(shard_of(run.id))
    wait_until(lambda: store.redis.zscore(leases, f"{run.id} {GIL}") < time.time(),
               config.get_settings().heartbeat_lapse + 5, "the step's lease to lapse")


@pytest.mark.long  # mostly waiting out a lapse: beside the rest (scripts/test)
def test_a_stopped_worker_s_leases_lapse(chaos_app, deployment):
    """A worker stopped whole (SIGSTOP) is frozen: its keeper stops beating its leases, and
    the reaper restarts its step on another worker, as when its own thread beat them."""
    a = deployment.worker("a")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    first = waiting(run)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        deployment.worker("b")
        deployment.beat()
        again = waiting(run, timeout=30)  # restarted, on b
        assert again["worker"] != first["worker"]
        open_gate(run)
        done = run.wait(30)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    assert done.state == "succeeded", done
    assert done.restarts == 1
