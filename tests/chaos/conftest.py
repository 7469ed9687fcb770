"""Fixtures of the crash tests: their own worker processes (queue ``chaos``), beat, sweepers.

The crash tests run workers of ``tests.chaos.app`` on their own queue, so the
session's ``tests.app`` worker never sees their messages; the test process enqueues
through an equivalent app (``chaos_app``), put back to the session's app afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import flowkit
from flowkit import config
from flowkit.engine import broker
from flowkit.events import Event
from flowkit.serialization import loads
from flowkit.store import get_store
from flowkit.testing import LocalRedis, WorkerProcess
from tests.chaos.workflows import QUEUE
from tests.conftest import FAST, ROOT


def pytest_collection_modifyitems(items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.chaos)


def _use_app(settings: flowkit.Settings):
    """Make the test process enqueue like the chaos workers; returns the app to restore."""
    previous = broker._app
    flowkit.create_celery_app(
        "flowkit-chaos", settings=settings.replace(default_queue=QUEUE),
        imports=["tests.chaos.workflows", "tests.chaos.joins"],
    )
    return previous


def _restore_app(previous) -> None:
    broker.use_app(previous)
    if previous is not None:
        previous.set_current()


@contextmanager
def deployed(monkeypatch, tmp_path, redis_url: str, broker_url: str | None,
             **env: str) -> Iterator[Deployment]:
    """A deployment (workers, beat: start them) with its store at ``redis_url`` and its
    broker at ``broker_url`` (None: the store's default), this process configured alike."""
    env = {**FAST, "PYTHONPATH": ROOT, "FLOWKIT_DEFAULT_QUEUE": QUEUE,
           "FLOWKIT_REDIS_URL": redis_url, "FLOWKIT_BROKER_URL": broker_url or "", **env}
    settings = config.get_settings().replace(redis_url=redis_url, broker_url=broker_url)
    monkeypatch.setattr(config, "_settings", settings)
    previous = _use_app(settings)
    deployment = Deployment(env, tmp_path)
    try:
        yield deployment
    finally:
        deployment.stop()
        _restore_app(previous)


def under_way(deployment: Deployment, workflow: flowkit.Workflow, count: int,
              data: dict) -> list[flowkit.Run]:
    """Two workers and beat of ``deployment`` started, and ``count`` runs of ``workflow``
    two steps in on average (a failover test's runs, mid-way)."""
    store = get_store()
    deployment.worker("a")
    deployment.worker("b")
    deployment.beat()
    runs = [workflow.start(data) for _ in range(count)]
    wait_for(lambda: sum(len(store.checkpoints(r.id)) for r in runs) >= count * 2, 60,
             "the runs to be under way")
    return runs


@pytest.fixture
def chaos_env(flowkit_env) -> dict[str, str]:
    return {**flowkit_env, "FLOWKIT_DEFAULT_QUEUE": QUEUE}


@pytest.fixture
def chaos_app(store, chaos_env):
    previous = _use_app(config.get_settings())
    yield
    _restore_app(previous)


class Deployment:
    """Worker and beat processes of one test, all stopped (SIGKILL) after it."""

    def __init__(self, env: dict[str, str], tmp_path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.workers: list[WorkerProcess] = []
        self.beats: list[subprocess.Popen] = []

    def worker(self, name: str, concurrency: int = 4, start: bool = True, pool: str = "threads",
               queues: tuple[str, ...] = (QUEUE,), extra: tuple[str, ...] = (),
               **env: str) -> WorkerProcess:
        """``extra``: more arguments of ``celery worker`` (``--max-tasks-per-child 1``)."""
        proc = WorkerProcess(
            "tests.chaos.app", name=name, queues=queues, concurrency=concurrency,
            env={**self.env, **env}, cwd=ROOT, pool=pool, extra=extra,
        )
        self.workers.append(proc)
        return proc.start() if start else proc

    def consuming(self, *names: str, timeout: float = 30.0) -> None:
        """Wait until each named worker answers a control ping: its consumer loop runs, so it
        takes messages from now on. A worker logs "ready." a moment before that; a loaded
        machine widens the gap, and a test of two workers then saw one take every message."""
        app = broker.get_app()

        def answered() -> bool:
            replies = app.control.ping(timeout=1.0) or []
            heard = {node.split("@")[0] for reply in replies for node in reply}
            return set(names) <= heard

        wait_for(answered, timeout, f"workers {', '.join(names)} to consume")

    def beat(self, **env: str) -> subprocess.Popen:
        """The reaper as production runs it: ``celery beat`` sending ``flowkit.reaper``."""
        log = open(self.tmp_path / f"beat{len(self.beats)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.chaos.app", "beat", "--loglevel", "INFO",
             "--schedule", str(self.tmp_path / f"beat{len(self.beats)}-schedule")],
            env={**os.environ, **self.env, **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.beats.append(proc)
        return proc

    def sweepers(self, count: int, **env: str) -> list[dict]:
        """``count`` reapers in separate processes, released at the same instant; their reports."""
        go = f"chaos:sweep-go:{time.time_ns()}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.sweeper", go],
                env={**os.environ, **self.env, **env}, cwd=ROOT, stdout=subprocess.PIPE, text=True,
            )
            for _ in range(count)
        ]
        r = get_store().redis
        for _ in range(count):  # each says it is ready to sweep; then all go at once
            assert r.blpop(f"{go}:ready", timeout=30) is not None, "a sweeper did not start"
        r.rpush(go, *range(count))
        return [json.loads(p.communicate(timeout=30)[0].strip().splitlines()[-1]) for p in procs]

    def stop(self) -> None:
        for proc in self.workers:
            proc.kill()
        for beat in self.beats:
            if beat.poll() is None:
                os.killpg(beat.pid, 9)
                beat.wait(10)


@pytest.fixture
def deployment(chaos_env, tmp_path):
    dep = Deployment(chaos_env, tmp_path)
    yield dep
    dep.stop()


@pytest.fixture
def private_redis(flowkit_env, tmp_path, monkeypatch):
    """A Redis of this test only, with AOF on, as the README tells production to run it."""
    with LocalRedis(appendonly=True) as server:
        settings = config.get_settings().replace(
            redis_url=f"redis://127.0.0.1:{server.port}/1",
            broker_url=f"redis://127.0.0.1:{server.port}/0",
        )
        monkeypatch.setattr(config, "_settings", settings)
        previous = _use_app(settings)
        yield server
        _restore_app(previous)


# -- what the tests read back ---------------------------------------------------------


def waiting(run: flowkit.Run, timeout: float = 20.0) -> dict:
    """Block until the ``hold`` step of ``run`` runs (again); its attempt and worker."""
    got = get_store().redis.blpop(f"chaos:waiting:{run.id}", timeout=timeout)
    assert got is not None, f"the hold step of run {run.id} did not run within {timeout}s"
    return loads(got[1])


def open_gate(run: flowkit.Run) -> None:
    get_store().redis.rpush(f"chaos:gate:{run.id}", 1)


def side_effects(run: flowkit.Run, what: str) -> dict[str, int]:
    """Bodies of each step of ``run`` that ``started`` or ``finished``, counted in Redis."""
    r = get_store().redis
    prefix = f"chaos:{what}:{run.id}:"
    return {k[len(prefix):]: int(r.get(k)) for k in r.scan_iter(f"{prefix}*")}


def reruns(run: flowkit.Run) -> int:
    """Bodies that began although their step was already checkpointed."""
    return int(get_store().redis.get(f"chaos:rerun:{run.id}") or 0)


def of_type(events: list[Event], type_: str) -> list[Event]:
    return [e for e in events if e.type == type_]


def wait_for(predicate: Callable[[], object], timeout: float, message: str):
    from tests.conftest import wait_until

    return wait_until(predicate, timeout, message)
