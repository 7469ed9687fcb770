"""SIGTERM drains a worker: running steps finish within the grace, longer ones are handed over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import flowkit
from flowkit.engine import control
from flowkit.engine.processes import children_of, process_state
from flowkit.serialization import loads
from flowkit.store import get_store
from tests.chaos.conftest import QUEUE, of_type, open_gate, side_effects, wait_for, waiting
from tests.chaos.workflows import brief_then_hold, held, running_a_program
from tests.conftest import ROOT

#: Each test waits out a drain's grace on worker processes of its own: beside the rest.
pytestmark = pytest.mark.long

HOLD = "1:chaos.hold"
#: What Celery logs when a shutdown handler raises (a gevent worker's did, on every SIGTERM:
#: its signal handlers run in gevent's event loop, where starting a thread must not block).
HANDLER_FAILED = ("Signal handler", "BlockingSwitchOutError")


def shut_down_cleanly(worker) -> None:
    bad = [line for line in worker.lines if any(f in line for f in HANDLER_FAILED)]
    assert not bad, f"worker {worker.name}'s shutdown logged errors:\n" + "\n".join(bad)


def sigterm(worker) -> dict:
    """Send SIGTERM without blocking; the result dict gets the exit code and when it came."""
    result: dict = {}

    def stop() -> None:
        result["code"] = worker.terminate(timeout=60)
        result["at"] = time.monotonic()

    threading.Thread(target=stop, daemon=True).start()
    wait_for(lambda: any("Warm shutdown" in line for line in list(worker.lines)), 10,
             f"worker {worker.name} to begin its warm shutdown")
    return result


@pytest.mark.parametrize("pool", ["threads", "gevent"])  # gevent: the Procfile's worker_llm
def test_sigterm_lets_the_running_step_finish_and_takes_no_new_step(chaos_app, deployment, pool):
    a = deployment.worker("a", pool=pool, FLOWKIT_DRAIN_GRACE="20")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    assert waiting(run)["worker"].startswith("a@")
    deployment.worker("b")

    asked = time.monotonic()
    stopped = sigterm(a)
    # while it drains it is no consumer of its queue (the gauge counted it until it exited)
    wait_for(lambda: [w["name"][:2] for w in control.live_workers()
                      if QUEUE in control.consumes(w)] == ["b@"], 10,
             "only worker b to consume the queue while a drains")
    assert consumers_of(QUEUE) == 1
    open_gate(run)  # the step finishes after the worker was asked to stop
    done = run.wait(30)
    wait_for(lambda: "code" in stopped, 20, "worker a to exit")

    assert done.state == "succeeded" and done.output["n"] == 3
    assert stopped["code"] == 0 and stopped["at"] - asked < 20
    history = run.events()
    assert not of_type(history, "run.restarted")
    started = {e.data["step"]: e.data["worker"] for e in of_type(history, "step.started")}
    assert started[HOLD].startswith("a@")
    assert started["2:chaos.work"].startswith("b@"), "a draining worker took a new step"
    assert side_effects(run, "started")[HOLD] == 1
    assert any("flowkit drain:" in line and "is idle" in line for line in a.lines), a.output()
    shut_down_cleanly(a)


@pytest.mark.parametrize("pool", ["threads", "prefork", "gevent", "solo"])
def test_a_step_longer_than_the_grace_is_handed_over_at_once(chaos_app, deployment, pool):
    # a lapse of a minute and no reaper: only the handover can resume the step quickly.
    # prefork: the step runs in a child process; the parent finds it through its lease.
    # solo: the step runs inside Celery's consumer loop, which stays up until it ends
    slow_lapse = {"FLOWKIT_HEARTBEAT_LAPSE": "60", "FLOWKIT_DRAIN_GRACE": "1.5"}
    a = deployment.worker("a", pool=pool, concurrency=2, **slow_lapse)
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    first = waiting(run)
    assert first["worker"].startswith("a@")
    in_child = not first["worker"].endswith(f":{a.pid}")
    assert in_child == (pool == "prefork")
    b = deployment.worker("b", **slow_lapse)

    asked = time.monotonic()
    stopped = sigterm(a)
    try:
        second = waiting(run, timeout=20)
    except AssertionError as exc:  # say what the workers did
        raise AssertionError(f"{exc}\nworker a:\n{a.output()[-3000:]}\n"
                             f"worker b:\n{b.output()[-3000:]}") from None
    resumed_after = time.monotonic() - asked

    assert second["attempt"] == 2 and second["worker"].startswith("b@")
    assert 1.5 <= resumed_after < 1.5 + 8, f"resumed {resumed_after:.1f}s after SIGTERM"
    wait_for(lambda: "code" in stopped, 10, "worker a to exit after the handover")
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded" and done.output["n"] == 3
    assert done.restarts == 0, "a deliberate handover must not count as a crash"
    [restarted] = of_type(run.events(), "run.restarted")
    assert "drained" in restarted.data["reason"] and HOLD in restarted.data["reason"]
    assert restarted.data["superseded"] == [{"step": HOLD, "attempt": 1, "worker": first["worker"]}]
    assert side_effects(run, "finished") == {"0:chaos.work": 1, HOLD: 1, "2:chaos.work": 1}
    assert any("flowkit drain: handed over 1 run(s)" in line for line in a.lines), a.output()
    shut_down_cleanly(a)


def test_a_prefork_worker_begins_no_next_step_of_a_chain_after_sigterm(chaos_app, deployment):
    """A prefork worker's steps run in its pool's children, forked before SIGTERM: the drain
    flag was the parent's alone, so a child went on with its chain's next step inline after
    SIGTERM, and that step, outliving the grace, was handed over and ran twice. Now the
    chain stops there and its next step goes to the broker, for another worker.
    FLOWKIT_INLINE_STEPS_SECONDS widens the window (by default, 50 ms after a step began)."""
    inline = {"FLOWKIT_INLINE_STEPS_SECONDS": "120", "FLOWKIT_DRAIN_GRACE": "30"}
    a = deployment.worker("a", pool="prefork", concurrency=1, **inline)
    run = brief_then_hold.start({"n": 0})
    r = get_store().redis
    began = r.blpop(f"chaos:began:{run.id}", timeout=20)
    assert began is not None, f"the first step of run {run.id} did not begin"
    first = loads(began[1])
    node = first["worker"].rpartition(":")[0]
    assert node.startswith("a@") and first["worker"] != f"{node}:{a.pid}"  # in a child
    deployment.worker("b", **inline)

    stopped = sigterm(a)
    # the parent's heartbeat reads the flag its SIGTERM set; then the child may go on
    wait_for(lambda: announced(node).get("draining"), 10, "worker a to say it drains")
    r.rpush(f"chaos:go:{run.id}", 1)
    second = waiting(run)
    assert second["attempt"] == 1 and second["worker"].startswith("b@"), (
        f"the next step began on {second['worker']} after SIGTERM\n{a.output()[-3000:]}")
    wait_for(lambda: "code" in stopped, 20, "worker a to exit")
    assert stopped["code"] == 0
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded" and done.output["n"] == 2
    assert not of_type(run.events(), "run.restarted")
    assert side_effects(run, "started") == {"0:chaos.brief": 1, HOLD: 1}
    assert any("flowkit drain:" in line and "is idle" in line for line in a.lines), a.output()
    shut_down_cleanly(a)


def test_flowkit_drain_stops_a_named_worker_and_hands_over_what_outlives_the_grace(
    chaos_app, deployment, chaos_env
):
    a = deployment.worker("a")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    first = waiting(run)
    node = first["worker"].rpartition(":")[0]
    deployment.worker("b")

    drained = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "drain", node, "--app", "tests.chaos.app",
         "--grace", "1.5", "--shutdown", "--json"],
        env={**os.environ, **chaos_env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout) == {"workers": [node], "idle": True, "handed_over": [run.id]}
    second = waiting(run)
    assert second["attempt"] == 2 and second["worker"].startswith("b@")
    assert a.proc.wait(20) == 0
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded" and done.restarts == 0
    assert side_effects(run, "finished") == {"0:chaos.work": 1, HOLD: 1, "2:chaos.work": 1}
    assert {e.data["worker"].partition("@")[0] for e in run.events()
            if e.type == "step.started" and e.data["step"] == "2:chaos.work"} == {"b"}


def test_flowkit_drain_names_workers_that_do_not_answer(chaos_app, chaos_env):
    drained = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "drain", "nobody@nowhere", "--app", "tests.chaos.app"],
        env={**os.environ, **chaos_env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert drained.returncode == 1
    assert "no answer from worker(s) nobody@nowhere" in drained.stderr
    assert "(`flowkit workers` lists them)" in drained.stderr  # it named celery inspect


def consumers_of(queue: str) -> float:
    """The ``flowkit_queue_consumers`` gauge of ``queue``, as a scrape reads it."""
    from flowkit.metrics.deployment import DeploymentCollector

    for family in DeploymentCollector(store=get_store).collect():
        for sample in family.samples:
            if sample.name == "flowkit_queue_consumers" and sample.labels["queue"] == queue:
                return sample.value
    return 0.0


def announced(name: str) -> dict:
    found = [w for w in control.live_workers() if w["name"] == name]
    return found[0] if found else {}


def test_a_worker_drained_without_shutdown_consumes_nothing_in_every_view(
    chaos_app, deployment, chaos_env
):
    """`flowkit drain` without --shutdown cancels a worker's consumers and leaves it running
    (a blue/green deploy's old colour): it was still listed as its queue's consumer, by
    /workers, the gauge, /healthz and a queued run's waiting_for, and the reaper later
    told the operator to restart it."""
    deployment.worker("a")
    deployment.beat()
    # what it announced, not only its first beat (which comes a moment before)
    wait_for(lambda: any(w["name"].startswith("a@") and "queues" in w
                         for w in control.live_workers()), 20, "worker a to announce itself")
    node = next(w["name"] for w in control.live_workers() if w["name"].startswith("a@"))
    assert announced(node)["queues"] == [QUEUE] and consumers_of(QUEUE) == 1

    drained = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "drain", node, "--app", "tests.chaos.app",
         "--grace", "0", "--json"],
        env={**os.environ, **chaos_env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout)["idle"] is True
    wait_for(lambda: announced(node).get("queues") == [], 10, "worker a to announce no queue")
    assert consumers_of(QUEUE) == 0
    assert control.unconsumed({QUEUE}, control.live_workers()) == [QUEUE]
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    assert flowkit.get_run(run.id).waiting_for.startswith(f"no live worker consumes queue {QUEUE}")
    # beat's sweeps are still its to run (were every worker drained, none ran)
    before = last_sweep()
    wait_for(lambda: last_sweep() > before, 20, "a sweep after the drain")
    assert announced(node)["queues"] == []


def last_sweep() -> float:
    store = get_store()
    swept = store.redis.get(store.keys.swept)
    return json.loads(swept)["at"] if swept else 0.0


def test_draining_a_prefork_worker_hands_over_none_of_its_namesake_s_steps(chaos_app, deployment):
    """Two prefork workers of one name (two copies of one unit on a host): the drain of one
    selected the steps to hand over by node name, and restarted the other's running step."""
    short = {"FLOWKIT_HEARTBEAT_LAPSE": "60", "FLOWKIT_DRAIN_GRACE": "1"}
    a = deployment.worker("a", pool="prefork", concurrency=1, **short)
    mine = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    held_here = waiting(mine)
    assert held_here["worker"].startswith("a@")
    # a takes one message at a time (prefetch 1, its one child busy): the namesake gets it
    namesake = deployment.worker("a", pool="prefork", concurrency=1, **short)
    theirs = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    held_there = waiting(theirs)
    assert held_there["worker"].startswith("a@") and held_there["worker"] != held_here["worker"]

    stopped = sigterm(a)
    wait_for(lambda: "code" in stopped, 30, "worker a to drain and exit")
    assert of_type(theirs.events(), "run.restarted") == [], "the namesake's step was handed over"
    [restarted] = of_type(mine.events(), "run.restarted")
    assert "drained" in restarted.data["reason"]
    assert namesake.alive()
    open_gate(theirs)
    open_gate(mine)  # handed over to the namesake, its only worker now
    assert theirs.wait(30).state == "succeeded" and mine.wait(30).state == "succeeded"
    assert side_effects(theirs, "started")[HOLD] == 1


def test_a_sigterm_to_a_prefork_worker_s_whole_process_group_fails_no_run(chaos_app, deployment):
    """systemd's default KillMode=control-group, ``kill -TERM -PGID``: the pool's children
    get the SIGTERM too, and billiard's handler raises SystemExit inside the running step,
    which failed as the step's own ``sys.exit()`` (ComponentExit): the run failed at a
    deploy. Now the child's step ends with it and is handed over at once: it restarts on
    another worker with no lapse to wait out and no reaper (it waited out the lapse, and
    the drain said the worker was idle)."""
    a = deployment.worker("a", pool="prefork", concurrency=2, FLOWKIT_DRAIN_GRACE="1",
                          FLOWKIT_HEARTBEAT_LAPSE="60")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    assert waiting(run)["worker"].startswith("a@")
    os.killpg(a.pid, signal.SIGTERM)
    a.proc.wait(30)
    assert any("this pool process was sent SIGTERM; handed over" in line for line in a.lines), \
        a.output()
    deployment.worker("b")  # and no beat: no reaper restarts it
    again = waiting(run, timeout=30)
    assert again["worker"].startswith("b@")
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded", done
    assert done.restarts == 0, "a deliberate handover must not count as a crash"
    assert not of_type(run.events(), "step.failed")
    [restarted] = of_type(run.events(), "run.restarted")
    assert "its pool process was sent SIGTERM" in restarted.data["reason"]


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_a_group_sigterm_that_ends_a_step_s_program_fails_no_run(chaos_app, deployment, pool):
    """The signal to the worker's whole process group also reaches the programs its steps
    run (ffmpeg, a browser): the step failed with ``CalledProcessError ... died with
    SIGTERM`` and failed its run at a deploy. Such a step is handed over at once (no lapse,
    no reaper: not a crash) and restarts on another worker."""
    a = deployment.worker("a", pool=pool, FLOWKIT_DRAIN_GRACE="5", FLOWKIT_HEARTBEAT_LAPSE="60")
    run = running_a_program.start({"n": 0, "chunks": 1, "pause": 0.01})
    assert waiting(run)["worker"].startswith("a@")
    os.killpg(a.pid, signal.SIGTERM)
    assert a.proc.wait(30) == 0
    assert any("ended by a signal as this worker began to drain" in line for line in a.lines), \
        a.output()
    deployment.worker("b")  # and no beat: no reaper restarts it
    done = run.wait(30)
    assert done.state == "succeeded", done
    assert done.restarts == 0, "a deliberate handover must not count as a crash"
    assert not of_type(run.events(), "step.failed")
    [restarted] = of_type(run.events(), "run.restarted")
    assert "a program of the step ended by its signal" in restarted.data["reason"]
    assert side_effects(run, "started")["1:chaos.program"] == 2


@pytest.mark.parametrize("pool, shell", [("threads", False), ("gevent", False),
                                         ("threads", True)])
def test_a_handover_ends_the_programs_of_the_steps_it_hands_over(chaos_app, deployment, pool,
                                                                 shell):
    """A threads or gevent worker ends itself after a handover, to stop the handed-over
    attempts; the programs they ran (a step's ffmpeg; the sleep under a ``shell=True``
    command) were reparented to init and ran on beside the attempt that restarted the step
    elsewhere."""
    a = deployment.worker("a", pool=pool, FLOWKIT_DRAIN_GRACE="1")
    run = running_a_program.start({"n": 0, "chunks": 1, "pause": 0.01, "shell": shell})
    program = waiting(run)["program"]
    if shell:
        wait_for(lambda: children_of(program), 10, "the shell to start its program")
    programs = [program, *children_of(program)]
    assert all(process_state(pid) not in ("X", "Z") for pid in programs)
    a.proc.send_signal(signal.SIGTERM)  # the worker alone, as a process manager's stop
    assert a.proc.wait(30) == 0
    assert any("flowkit drain: handed over 1 run(s)" in line for line in a.lines), a.output()
    wait_for(lambda: all(process_state(pid) in ("X", "Z") for pid in programs), 10,
             "the step's programs to end")


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_sighup_drains_then_the_worker_comes_back(chaos_app, deployment, pool):
    """SIGHUP is Celery's restart (for a worker without a terminal: under every process
    manager). It sent no worker_shutting_down: no grace, no handover, the worker waited for
    its steps however long they took; and a worker started as ``python -m celery`` never came
    back (its re-exec could not import celery). Now it drains as SIGTERM does, hands over
    what outlives the grace, and executes its command again."""
    a = deployment.worker("a", pool=pool, concurrency=2, FLOWKIT_DRAIN_GRACE="1")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    first = waiting(run)
    a.proc.send_signal(signal.SIGHUP)
    second = waiting(run, timeout=30)  # handed over after the grace, taken again
    assert second["attempt"] == 2
    wait_for(lambda: sum(" ready." in line for line in list(a.lines)) == 2, 30,
             "worker a to come back")
    assert a.alive() and any("flowkit drain: handed over 1 run(s)" in line for line in a.lines)
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded" and done.restarts == 0, done
    [restarted] = of_type(run.events(), "run.restarted")
    assert restarted.data["superseded"][0]["worker"] == first["worker"]


def test_a_sigterm_after_a_sighup_stops_the_worker_for_good(chaos_app, deployment):
    """A terminal closing sends SIGHUP, then its supervisor SIGTERM: the worker stops and
    does not execute itself again behind the supervisor's back."""
    a = deployment.worker("a", FLOWKIT_DRAIN_GRACE="1")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    waiting(run)
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any(w["name"].startswith("a@") and w.get("draining")
                         for w in control.live_workers()), 10, "worker a to drain on SIGHUP")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0
    assert sum(" ready." in line for line in a.lines) == 1, a.output()
