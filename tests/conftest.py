"""Shared fixtures: a real redis-server per session, real celery worker processes.

flowkit's own data lives in Redis db 1 and is flushed before every test; the
Celery broker and result backend use db 0, so workers keep their queues. A
leftover message from an earlier test finds its run gone and does nothing.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import flowkit
from flowkit import config
from flowkit.store import get_store
from flowkit.testing import InThreadWorker, LocalRedis, WorkerProcess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# pytest-xdist's workers run with COLUMNS=80, and the CLI's tables, printed into a pipe,
# take COLUMNS for their width (else 200): the tests reading the CLI's lines (flowkit
# status, doctor) read them wrapped, and failed under -n only
os.environ.pop("COLUMNS", None)

if sys.version_info < (3, 12):
    # CPython 3.11 keeps the AST converter's recursion count in state its threads share:
    # two threads parsing at once (a worker thread formatting a traceback, whose carets
    # parse the failing line, while the main thread builds a Flask app's routes) fail one
    # with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905,
    # fixed in 3.12). A fresh-clone run met it once; the test process parses one at a time.
    _parse, _parsing = ast.parse, threading.RLock()

    def _one_at_a_time(*args, **kwargs):
        with _parsing:
            return _parse(*args, **kwargs)

    ast.parse = _one_at_a_time

#: Tight reaper settings so crash tests finish in seconds.
FAST = {
    "FLOWKIT_HEARTBEAT_INTERVAL": "0.5",
    "FLOWKIT_HEARTBEAT_LAPSE": "2",
    "FLOWKIT_REAPER_INTERVAL": "0.5",
}


@pytest.fixture(scope="session")
def redis_server():
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing on CI: `apt-get install redis-server`.")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with LocalRedis() as server:
        yield server


@pytest.fixture(scope="session")
def flowkit_env(redis_server) -> dict[str, str]:
    """Environment of every process of the test deployment (workers, servers)."""
    env = {
        "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/1",
        "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        **FAST,
        "PYTHONPATH": ROOT,
    }
    os.environ.update(env)
    config.reset()
    import tests.app  # noqa: F401 - the same Celery app the workers run

    return env


@pytest.fixture
def store(flowkit_env):
    """flowkit's store on a clean database."""
    s = get_store()
    s.redis.flushdb()
    yield s


@pytest.fixture(scope="session")
def worker(flowkit_env):
    """The fast tier's worker for the whole session: Celery's embedded worker in threads of
    the test process, on the real Redis broker (tests that kill workers start processes)."""
    from tests.app import app

    with InThreadWorker(app, name="main", pool="threads", concurrency=4) as embedded:
        yield embedded


@pytest.fixture
def beat(flowkit_env, tmp_path_factory):
    """celery beat as the Procfile runs it: it fires wait timeouts, sleeps, delayed starts.
    One per test that asks for it: a beat kept for the module swept under the later tests
    that say none runs (a timer fired while a test was showing what happens before it)."""
    schedule = tmp_path_factory.mktemp("beat") / "schedule"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.app", "beat", "--schedule", str(schedule)],
        env={**os.environ, **flowkit_env}, cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(10)


@pytest.fixture
def start_worker(flowkit_env):
    """Start extra worker processes for one test; all are stopped after it."""
    started: list[WorkerProcess] = []

    def start(name: str, app: str = "tests.app", env_overrides: dict | None = None,
              **kwargs) -> WorkerProcess:
        env = {**flowkit_env, **(env_overrides or {})}
        proc = WorkerProcess(app, name=name, env=env, cwd=ROOT, **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture(autouse=True)
def _no_leaked_configuration():
    """A test that changes settings in this process must undo it."""
    before = config.get_settings() if config._settings is not None else None
    yield
    after = config._settings
    if before is not None and after is not None and after != before:
        config._settings = before
        pytest.fail("test left flowkit settings changed; use monkeypatch or restore them")


def wait_until(predicate, timeout: float = 10.0, message: str = "condition"):
    """Poll Redis-backed state until ``predicate()`` is truthy (state has no push channel)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.02)


def counts(run: flowkit.Run) -> dict[str, int]:
    """Executions of each component in ``run``, counted by the test components."""
    r = get_store().redis
    prefix = f"count:{run.id}:"
    return {k[len(prefix):]: int(r.get(k)) for k in r.scan_iter(f"{prefix}*")}


def reached_gate(run: flowkit.Run, name: str, timeout: float = 20.0) -> int:
    """Block until step ``name`` of ``run`` waits at its gate; returns its attempt number."""
    got = get_store().redis.blpop(f"waiting:{run.id}:{name}", timeout=timeout)
    assert got is not None, f"step {name} of run {run.id} never reached its gate"
    return int(got[1])


def open_gate(run: flowkit.Run, name: str) -> None:
    get_store().redis.rpush(f"gate:{run.id}:{name}", 1)
