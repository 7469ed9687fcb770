"""Celery workers for tests: a real ``celery worker`` process, or a worker in this process.

A :class:`WorkerProcess` is what crash tests kill. An :class:`InThreadWorker` runs
Celery's own embedded test worker (``celery.contrib.testing.worker``) in threads of the
test process, consuming the real broker: no process start, no import of the app in a
child, so fast tests stay fast; it is not a place to test crashes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from celery import Celery, signals
from celery.contrib.testing.worker import TestWorkController, start_worker

from ..orphans import orphan_guarded


class _Controller(TestWorkController):
    """Celery's embedded test worker, announcing that it is ready as a real worker does
    (``worker_ready``: flowkit starts the heartbeat and learns the node's name)."""

    def on_consumer_ready(self, consumer) -> None:
        signals.worker_ready.send(sender=consumer)
        super().on_consumer_ready(consumer)


#: The InThreadWorker running in this process, if any: at most one at a time.
_embedded: InThreadWorker | None = None
_embedded_lock = threading.Lock()


class WorkerProcess:
    """A real ``celery worker`` process; ``start()`` returns once it logged that it is ready."""

    def __init__(
        self,
        app: str,
        *,
        name: str = "worker",
        queues: Sequence[str] = ("flowkit",),
        pool: str = "threads",
        concurrency: int = 4,
        env: Mapping[str, str] | None = None,
        extra: Sequence[str] = (),
        cwd: str | None = None,
        ends_with_us: bool = False,
    ) -> None:
        """``ends_with_us``: stopped by the kernel when this process dies, SIGKILL too (the
        demo's worker); ``start()`` must then be called from a thread that lives as long
        as this process."""
        self.name = name
        self.args = [
            sys.executable, "-m", "celery", "-A", app, "worker",
            "--pool", pool, "--concurrency", str(concurrency),
            "--queues", ",".join(queues), "--hostname", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO", *extra,
        ]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.ends_with_us = ends_with_us
        self.proc: subprocess.Popen | None = None
        self.lines: deque[str] = deque(maxlen=2000)
        self._ready = threading.Event()
        self._saw_ready = False

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        self._ready.clear()
        self._saw_ready = False
        self.proc = subprocess.Popen(
            orphan_guarded(self.args) if self.ends_with_us else self.args, env=self.env,
            cwd=self.cwd, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise RuntimeError(f"worker {self.name} not ready in {timeout}s:\n{self.output()}")
        if not self._saw_ready:  # its output ended first: the worker exited
            code = self.proc.wait(10)
            raise RuntimeError(f"worker {self.name} exited with {code}:\n{self.output()}")
        return self

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip())
            if " ready." in line:
                self._saw_ready = True
                self._ready.set()
        self._ready.set()  # exited: unblock start(), which then reports the output

    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its pool children: a crash, no cleanup at all."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (warm shutdown) and wait for the exit code."""
        if not self.alive():
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.terminate(20)


class InThreadWorker:
    """A Celery worker in this process's threads, on the app's real broker.

    ``start()`` returns once it consumes; ``stop()`` waits for its running tasks (up to
    ``shutdown_timeout``). The app must be flowkit's (``create_celery_app``): the worker
    runs the same code and settings as the test. One at a time per process (flowkit keeps
    one heartbeat and one drain per worker process): a second ``start()`` raises.
    """

    def __init__(
        self, app: Celery, *, queues: Sequence[str] = ("flowkit",), pool: str = "threads",
        concurrency: int = 4, name: str = "inthread", shutdown_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.options: dict[str, Any] = {
            "pool": pool, "concurrency": concurrency, "queues": list(queues),
            "hostname": f"{name}@{os.uname().nodename}", "perform_ping_check": False,
            "shutdown_timeout": shutdown_timeout, "loglevel": "WARNING",
            "WorkController": _Controller,
        }
        self._running: AbstractContextManager | None = None

    def start(self) -> InThreadWorker:
        global _embedded
        with _embedded_lock:
            if _embedded is not None:
                raise RuntimeError(
                    f"InThreadWorker {_embedded.options['hostname']} already runs in this "
                    "process: flowkit keeps one heartbeat and one drain per worker process, so "
                    "stop it first, or give it more queues or concurrency, or start a "
                    "WorkerProcess")
            _embedded = self
        try:
            self._running = start_worker(self.app, **self.options)
            self._running.__enter__()
        except BaseException:
            self._running = None
            with _embedded_lock:
                _embedded = None
            raise
        return self

    def stop(self) -> None:
        global _embedded
        if self._running is not None:
            running, self._running = self._running, None
            try:
                running.__exit__(None, None, None)
            finally:
                with _embedded_lock:
                    _embedded = None

    def __enter__(self) -> InThreadWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
