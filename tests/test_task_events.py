"""What Flower shows: the task events of a real worker started with ``-E``.

Flower knows a task only from its worker's events (received, started, then succeeded,
failed or retried), keyed by task id. These tests capture those events from the broker
with Celery's own receiver while real worker and beat processes run flowkit's tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import defaultdict

import pytest

from flowkit.engine.broker import get_app, queue_depths, reaper_queue
from flowkit.testing import WorkerProcess
from tests import monitoring_workflows as wf
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration

ENDED = {"task-succeeded", "task-failed"}


class Events:
    """Every task event on the broker, from the moment it is made, by task id."""

    def __init__(self) -> None:
        self.by_task: dict[str, list[dict]] = defaultdict(list)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._receiver = None
        self._thread = threading.Thread(target=self._capture, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the event receiver did not start"

    def _capture(self) -> None:
        app = get_app()
        with app.connection_for_read() as conn:
            self._receiver = app.events.Receiver(conn, handlers={"*": self._on_event})
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict) -> None:
        if event["type"].startswith("task-"):
            with self._lock:
                self.by_task[event["uuid"]].append(event)

    def tasks(self) -> dict[str, dict]:
        """Per task id: its name and arguments (from task-received) and its event types."""
        with self._lock:
            found = {}
            for uuid, events in self.by_task.items():
                received = next((e for e in events if e["type"] == "task-received"), {})
                found[uuid] = {"name": received.get("name"), "args": received.get("args"),
                               "kwargs": received.get("kwargs"), "hostname": received.get("hostname"),
                               "types": [e["type"] for e in events]}
            return found

    def close(self) -> None:
        self._receiver.should_stop = True  # seen within a second (kombu's safety interval)
        self._thread.join(5)


@pytest.fixture
def events(store):
    captured = Events()
    yield captured
    captured.close()


@pytest.fixture
def monitored_env(flowkit_env) -> dict[str, str]:
    return {**flowkit_env, "FLOWKIT_DEFAULT_QUEUE": wf.QUEUE}


@pytest.fixture
def monitored(monitored_env):
    """Start worker processes of tests.monitoring_app, consuming only ``monitored``, with
    task events on (``-E``, as Flower needs); all stopped after the test."""
    started: list[WorkerProcess] = []

    def start(name: str, concurrency: int = 4) -> WorkerProcess:
        proc = WorkerProcess("tests.monitoring_app", name=name, queues=(wf.QUEUE,),
                             concurrency=concurrency, env=monitored_env, cwd=ROOT, extra=["-E"])
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def monitored_beat(monitored_env, tmp_path):
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.monitoring_app", "beat",
             "--schedule", str(tmp_path / "beat-schedule")],
            env={**os.environ, **monitored_env}, cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def test_every_flowkit_task_reaches_a_monitor_received_started_and_succeeded(events, monitored):
    monitored("flower")
    worker_name = f"flower@{os.uname().nodename}"
    runs = [wf.fanned.start({"n": 3}), wf.batched.start({"n": 4}),
            wf.looping.start({"round": 0}), wf.failing.start({}),
            wf.nested.start({"n": 3}), wf.looping_twice.start({"round": 1})]
    finished = [run.wait(30) for run in runs]
    assert [r.state for r in finished] == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 2
    assert finished[4].output == [[0, 1, 4], 0 + 1 + 2]
    assert finished[5].output == [{"round": 3}, {"round": 3}]
    run_ids = {run.id for run in runs}

    def ours() -> dict[str, dict]:
        return {uuid: t for uuid, t in events.tasks().items()
                if t["kwargs"] and any(run_id in t["kwargs"] for run_id in run_ids)}

    # the last events of a run may still be on their way from the worker
    wait_until(lambda: ours() and all(ENDED & set(t["types"]) for t in ours().values()), 10,
               "every task of the runs to end in the events")
    tasks = ours()
    names = {t["name"] for t in tasks.values()}
    assert {"flowkit.fan_out", "flowkit.fan_out_batch", "flowkit.gather", "flowkit.merge",
            "flowkit.finish", "flowkit.step.mon.split", "flowkit.step.mon.square",
            "flowkit.step.mon.think", "flowkit.step.mon.broken"} <= names
    for uuid, task in tasks.items():
        # one task per id: a replaced task (fan-out, agent loop) no longer lends its id
        # to what replaced it, and every task, ignored ones included, ends as succeeded
        assert task["types"] == ["task-received", "task-started", "task-succeeded"], (uuid, task)
        assert task["hostname"] == worker_name
    # arguments a person can read: the run, the step, the input
    [fan_out] = [t for t in tasks.values() if t["name"] == "flowkit.fan_out"
                 and runs[0].id in t["kwargs"]]
    assert fan_out["args"] == "([0, 1, 2],)"
    assert f"'run_id': '{runs[0].id}'" in fan_out["kwargs"] and "'key': '1:mon.square'" in \
        fan_out["kwargs"]
    thinks = [t for t in tasks.values() if t["name"] == "flowkit.step.mon.think"]
    assert sorted(t["args"] for t in thinks) == sorted(
        [f"({{'round': {i}}},)" for i in range(4)] + [f"({{'round': {i}}},)" for i in (1, 2, 3)] * 2)


@pytest.mark.long  # waits for beat's sweep behind a backlog: beside the rest (scripts/test)
def test_the_reaper_has_a_queue_of_its_own_that_every_worker_consumes(
    events, monitored, monitored_beat
):
    # a backlog at the top priority (runs of priority 9) on the only queue the worker names
    backlog = [wf.slowly.start({}, priority=9) for _ in range(20)]
    beat = monitored_beat()
    sweeps = reaper_queue(wf.QUEUE)
    wait_until(lambda: queue_depths([sweeps])[sweeps] >= 1, 20, "beat to send a sweep")
    assert queue_depths([wf.QUEUE])[wf.QUEUE] == len(backlog)  # one message per run

    worker = monitored("sweeping", concurrency=1)  # --queues monitored: nothing about reaping

    def received(name: str) -> list[float]:
        return sorted(e["timestamp"] for es in events.by_task.values() for e in es
                      if e["type"] == "task-received" and _name(es) == name)

    wait_until(lambda: received("flowkit.reaper"), 10, "the worker to take a sweep")
    steps_before = [t for t in received("flowkit.step.mon.slow")
                    if t < received("flowkit.reaper")[0]]
    # 20 steps of 0.3 s on one slot: behind them the sweep would have come after all 20
    # (the order of receipt, not a time limit that includes the worker's start-up)
    assert len(steps_before) <= 2, steps_before
    assert beat.poll() is None and worker.alive()
    for run in backlog:
        assert run.wait(30).state == "succeeded"


def _name(events: list[dict]) -> str | None:
    return next((e.get("name") for e in events if e["type"] == "task-received"), None)
