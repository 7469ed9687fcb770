"""The demo stops everything it started when it is told to stop: SIGTERM (``kill``, a
supervisor) with ``--keep``, and Ctrl-C (SIGINT to its process group) mid-run.

Real processes: the demo starts its own redis-server, celery worker, beat and gunicorn
(with its workers); the test reads the demo's process tree from /proc while it runs,
signals it, and checks that the demo exits and that none of those processes survives.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)"),
]


def _stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of its stat), or None once it has exited (gone,
    or a zombie waiting to be reaped): with the pid it names one process for good."""
    fields = _stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def _tree(root: int) -> dict[int, tuple[str, str]]:
    """Every live process under ``root`` (its children, theirs...): pid -> (start, cmdline)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, tuple[str, str]] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            start = _start_time(child)
            if start is not None and child not in found:
                found[child] = (start, _cmdline(child))
                todo.append(child)
    return found


def _alive(procs: dict[int, tuple[str, str]]) -> dict[int, str]:
    return {pid: cmd for pid, (start, cmd) in procs.items() if _start_time(pid) == start}


class Demo:
    """``python -m examples.demo`` (what scripts/demo execs) in its own session, its output
    lines pumped into a queue by a thread."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("FLOWKIT_") and k != "OPENAI_API_KEY"}
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "examples.demo", "--sections", "1", *args],
            cwd=ROOT, env={**env, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} in {timeout}s:\n" + self.output()) from None
            if line is None:
                raise AssertionError(f"the demo exited before {text!r}:\n" + self.output())
            self.lines.append(line)
            if text in line:
                return line

    def rest(self, timeout: float) -> None:
        """The output up to its end (the demo has exited and closed it)."""
        self._pump.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)

    def output(self) -> str:
        return "\n".join(self.lines)


def _wait_gone(procs: dict[int, tuple[str, str]], timeout: float) -> dict[int, str]:
    """Poll until none of ``procs`` is alive (a process's end has no event to await)."""
    deadline = time.monotonic() + timeout
    while (alive := _alive(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _kill_leftovers(demo: Demo, procs: dict[int, tuple[str, str]]) -> None:
    """Whatever the outcome, leave no process of this test behind."""
    if demo.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.proc.pid, signal.SIGKILL)
        demo.proc.wait(10)
    for pid in _alive(procs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _started_processes(demo: Demo) -> dict[int, tuple[str, str]]:
    procs = _tree(demo.proc.pid)
    commands = " | ".join(cmd for _, cmd in procs.values())
    for expected in ("redis-server", "celery -A workers.celery_app worker",
                     "celery -A workers.celery_app beat", "gunicorn"):
        assert expected in commands, f"{expected!r} not among the demo's processes: {commands}"
    gunicorn = [pid for pid, (_, cmd) in procs.items() if "gunicorn" in cmd]
    assert len(gunicorn) >= 2, "gunicorn's master and its worker"
    return procs


@pytest.mark.timeout(90)
@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_sigterm_stops_every_process_of_the_demo_kept_running(redis_server):
    demo = Demo("--keep")
    procs: dict[int, tuple[str, str]] = {}
    try:
        demo.wait_for("services keep running; watch page: http://127.0.0.1:", timeout=60)
        procs = _started_processes(demo)
        # the dashboard it names answers (the demo's API is open: no key to enter)
        dashboard = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/ui);", demo.output())
        assert dashboard, demo.output()
        with urllib.request.urlopen(dashboard.group(1), timeout=10) as page:
            assert page.status == 200 and page.headers.get_content_type() == "text/html"
        # the exports it prints take the CLI of another terminal to this deployment
        demo.wait_for("then: .venv/bin/flowkit runs", timeout=10)
        exports = dict(m.groups() for line in demo.lines
                       if (m := re.match(r"\s+export (\w+)=(\S+)$", line)))
        assert set(exports) >= {"FLOWKIT_APP", "FLOWKIT_REDIS_URL", "FLOWKIT_URL"}, exports
        assert "FLOWKIT_API_KEY" not in exports, "the demo's API is open"
        # the directory to run it from is named (the demo may be started from elsewhere)
        [where] = [m.group(1) for line in demo.lines if (m := re.match(r"\s+cd (\S+)$", line))]
        shell = {k: v for k, v in os.environ.items() if not k.startswith("FLOWKIT_")}
        listed = subprocess.run([sys.executable, "-m", "flowkit.cli", "runs", "--json"],
                                cwd=where, env={**shell, **exports}, capture_output=True,
                                text=True, timeout=30)
        assert listed.returncode == 0, listed.stderr
        assert [r["workflow"] for r in json.loads(listed.stdout)] == ["content"]

        demo.proc.send_signal(signal.SIGTERM)
        code = demo.proc.wait(45)
        survivors = _wait_gone(procs, timeout=10)
        assert not survivors, f"still running after the demo exited: {survivors}"
        demo.rest(10)
        out = demo.output()
        assert code == 128 + signal.SIGTERM, out
        assert "flowkit demo: SIGTERM received; stopping everything it started" in out
        assert out.rstrip().endswith("flowkit demo: stopped everything it started")
    finally:
        _kill_leftovers(demo, procs)


@pytest.mark.timeout(90)
@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_ctrl_c_mid_run_stops_every_process_of_the_demo(redis_server):
    demo = Demo()
    procs: dict[int, tuple[str, str]] = {}
    try:
        # the worker is writing the section: a step is running when Ctrl-C comes
        demo.wait_for("step.progress   2[0]:content.write_section", timeout=60)
        procs = _started_processes(demo)

        os.killpg(demo.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the foreground group
        code = demo.proc.wait(45)
        survivors = _wait_gone(procs, timeout=10)
        assert not survivors, f"still running after the demo exited: {survivors}"
        demo.rest(10)
        out = demo.output()
        assert code == 128 + signal.SIGINT, out
        assert "flowkit demo: SIGINT received; stopping everything it started" in out
        assert out.rstrip().endswith("flowkit demo: stopped everything it started")
    finally:
        _kill_leftovers(demo, procs)


@pytest.mark.timeout(90)
@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_a_demo_killed_with_sigkill_leaves_no_process_behind():
    """No handler runs on SIGKILL (an IDE's stop button, the OOM killer): its Redis,
    worker, beat and web server, each but Redis in a session of its own, were orphaned."""
    demo = Demo("--keep")
    procs: dict[int, tuple[str, str]] = {}
    try:
        demo.wait_for("services keep running; watch page: http://127.0.0.1:", timeout=60)
        procs = _started_processes(demo)
        demo.proc.kill()
        demo.proc.wait(10)
        survivors = _wait_gone(procs, timeout=60)
        assert not survivors, f"still running after the demo was killed: {survivors}"
    finally:
        _kill_leftovers(demo, procs)
