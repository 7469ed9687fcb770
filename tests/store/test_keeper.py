"""The lease keeper's bookkeeping and beats (flowkit.engine.keeper), on a real Redis with
real processes for the holders: it beats the leases of a live holder, skips a stopped one,
forgets a dead one; the pipe to it never blocks a step."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from flowkit.engine.keeper import Keeper, Link
from flowkit.engine.processes import process_state
from flowkit.states import RunState
from tests.conftest import wait_until
from tests.store.test_transitions import STEP, TOKEN, lease_lapses, make_run

pytestmark = pytest.mark.integration


@pytest.fixture
def holder():
    """A process that holds leases in these tests (it sleeps; a test stops or ends it)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait()


def kept(store, holder) -> tuple[str, Keeper]:
    """A running run whose step's lease ``holder`` holds, told to a new keeper."""
    run = make_run(store, RunState.RUNNING)
    keeper = Keeper(store.settings)
    keeper.apply(["+", holder.pid, "node:1", run, STEP, TOKEN])
    return run, keeper


def test_it_beats_the_lease_of_a_live_holder(store, holder):
    run, keeper = kept(store, holder)
    keeper.beat()
    assert lease_lapses(store, run) == pytest.approx(time.time() + store.settings.heartbeat_lapse,
                                                      abs=2)
    assert store.get_run(run)["worker"] == "node:1"


def test_it_stops_beating_a_lease_its_holder_let_go(store, holder):
    run, keeper = kept(store, holder)
    keeper.apply(["-", holder.pid, run, STEP, TOKEN])
    keeper.beat()
    assert lease_lapses(store, run) < time.time()  # as begun, at the tests' clock (T)


def test_a_late_let_go_of_an_older_attempt_keeps_the_new_one(store, holder):
    run, keeper = kept(store, holder)
    keeper.apply(["+", holder.pid, "node:1", run, STEP, "older"])
    keeper.apply(["+", holder.pid, "node:1", run, STEP, TOKEN])
    keeper.apply(["-", holder.pid, run, STEP, "older"])
    keeper.beat()
    assert lease_lapses(store, run) > time.time()


def test_a_stopped_holder_s_leases_are_not_beaten(store, holder):
    run, keeper = kept(store, holder)
    os.kill(holder.pid, signal.SIGSTOP)
    wait_until(lambda: process_state(holder.pid) in ("T", "t"), 5, "the holder to stop")
    keeper.beat()
    assert lease_lapses(store, run) < time.time()
    assert holder.pid in keeper.leases  # stopped, not gone: beaten again once it continues
    os.kill(holder.pid, signal.SIGCONT)
    wait_until(lambda: process_state(holder.pid) not in ("T", "t"), 5, "the holder to go on")
    keeper.beat()
    assert lease_lapses(store, run) > time.time()


def test_a_dead_holder_is_forgotten(store, holder):
    run, keeper = kept(store, holder)
    keeper.apply(["hold", holder.pid, "group", "member"])
    holder.kill()
    holder.wait()
    keeper.beat()
    assert lease_lapses(store, run) < time.time()
    assert holder.pid not in keeper.leases and holder.pid not in keeper.slots


def test_a_process_that_took_a_dead_holder_s_pid_is_not_the_holder(store, holder):
    """A pid is used again once its process is gone: the keeper beat on for the process that
    took it, and the dead holder's step never lapsed."""
    run, keeper = kept(store, holder)
    assert keeper.births[holder.pid]  # when it started, read as it said what it holds
    keeper.births[holder.pid] = "1"  # as if the holder had started at boot, and died since
    keeper.beat()
    assert lease_lapses(store, run) < time.time()
    assert holder.pid not in keeper.leases and holder.pid not in keeper.births


def test_a_holder_silent_past_the_stall_is_not_beaten_until_it_runs_again(store, holder):
    """Its heartbeat thread says it runs each interval: a process silent for
    FLOWKIT_HEARTBEAT_STALL is wedged (a C call that never gives the GIL back), and the
    keeper lets its leases lapse, as they did before there was a keeper."""
    run, keeper = kept(store, holder)
    keeper.heard[holder.pid] -= store.settings.heartbeat_stall + 1  # its last word, that long ago
    keeper.beat()
    assert lease_lapses(store, run) < time.time() and holder.pid in keeper.stalled
    keeper.apply(["alive", holder.pid])
    keeper.beat()
    assert lease_lapses(store, run) > time.time() and holder.pid not in keeper.stalled


def test_a_reset_forgets_what_the_holder_said_before(store, holder):
    """After a write it could not make, a process tells the keeper all it holds again,
    after a reset: a let-go the keeper missed would keep a slot for ever."""
    run, keeper = kept(store, holder)
    keeper.apply(["hold", holder.pid, "group", "missed"])
    keeper.apply(["reset", holder.pid])
    keeper.apply(["+", holder.pid, "node:1", run, "1:b", "tok-2"])
    assert keeper.leases[holder.pid] == {(run, "1:b"): "tok-2"}
    assert not keeper.slots.get(holder.pid)


def test_it_keeps_a_held_slot(store, holder):
    slots = store.keys.slots("group")[0]
    store.redis.zadd(slots, {"member": 1.0})
    keeper = Keeper(store.settings)
    keeper.apply(["hold", holder.pid, "group", "member"])
    keeper.beat()
    assert store.redis.zscore(slots, "member") > time.time()
    keeper.apply(["let_go", holder.pid, "group", "member"])
    store.redis.zadd(slots, {"member": 1.0})
    keeper.beat()
    assert store.redis.zscore(slots, "member") == 1.0


def test_a_keeper_process_beats_what_it_is_told_and_exits_with_its_pipe(store):
    """It is sent the settings it beats by, not the API's keys and secret: with them, a
    long line (over PIPE_BUF) was never sent, and the keeper never beat."""
    run = make_run(store, RunState.RUNNING)
    link = Link()
    many_keys = store.settings.replace(api_keys=",".join(["k" * 64] * 80), api_secret="s" * 64)
    link.start(many_keys, [["+", os.getpid(), "node:1", run, STEP, TOKEN]])
    keeper = link._proc
    wait_until(lambda: (link.check(store.settings, []), link.beating())[1], 20,
               "the keeper's first beat")
    assert lease_lapses(store, run) > time.time()
    link.stop()
    assert keeper.wait(10) == 0


def test_a_line_too_long_to_write_at_once_is_not_written(store):
    """Prefork children share the pipe: only lines of PIPE_BUF bytes at most are written
    whole at once. A longer one is not sent, and its process beats its own leases."""
    read, write = os.pipe()
    link = Link()
    link._fd, link._tried = write, True
    link._beating[0] = 1
    assert link.beating()
    link.send(["+", 1, "node:1", "run", "x" * select.PIPE_BUF, TOKEN])
    assert not link.beating()
    os.set_blocking(read, False)
    with pytest.raises(BlockingIOError):
        os.read(read, 10)
    os.close(read)
    os.close(write)


def drained(read: int) -> bytes:
    """All a pipe holds now."""
    os.set_blocking(read, False)
    written = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(read, 1 << 16):
            written += chunk
    return written


def test_a_keeper_that_stopped_reading_never_blocks_a_step_nor_loses_what_it_holds(store):
    read, write = os.pipe()
    os.set_blocking(write, False)
    link = Link()
    link._fd, link._tried = write, True
    link._beating[0] = 1
    sent = 0
    while link.beating():  # nobody reads: the pipe fills, then the link is lost
        link.send(["+", 1, "node:1", "run", "step", TOKEN])
        sent += 1
    written = drained(read)
    # what went in is whole lines, each as sent: the keeper reads no line cut short
    lines = written.split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == sent - 1
    assert all(json.loads(line) == ["+", 1, "node:1", "run", "step", TOKEN] for line in lines[:-1])
    # once the keeper reads again, the next heartbeat tells it all this process holds
    held = [["+", 1, "node:1", "run", "step", TOKEN], ["hold", 1, "group", "member"]]
    link.tick(1, held)
    assert link.beating()
    assert [json.loads(line) for line in drained(read).splitlines()] == [["reset", 1], *held]
    os.close(read)
    os.close(write)


def test_a_child_whose_settings_are_not_its_keeper_s_beats_its_own_leases(store):
    """A prefork child that changed its Redis (``configure()`` in ``worker_process_init``)
    was told the keeper beat for it, while the keeper beat its parent's Redis."""
    read, write = os.pipe()
    link = Link()
    link._fd, link._tried, link._settings = write, True, store.settings  # as inherited
    link._beating[0] = 1
    link.check(store.settings, [])
    assert link.beating()
    link.check(store.settings.replace(key_prefix="elsewhere"), [])
    assert not link.beating()
    os.close(read)
    os.close(write)


def test_a_keeper_replaced_for_new_settings_is_reaped(store):
    link = Link()
    link.start(store.settings, [])
    first = link._proc
    link.check(store.settings.replace(key_prefix="elsewhere"), [["alive", os.getpid()]])
    assert link._proc is not first
    wait_until(lambda: (link.check(link._settings, []), first.returncode is not None)[1], 10,
               "the first keeper to be reaped")
    link.stop()
