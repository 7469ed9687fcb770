"""The processes of ``flowkit dev``: started, logged as one, restarted, and all stopped.

A small process supervisor, because the dev loop needs exactly what generic ones
(honcho, watchfiles' ``run_process``) each do only part of: one interleaved log with a
coloured name before every child's line; some children restarted when code changes
while the others (Redis, beat) keep running; readiness known per child (a line it
prints, or a probe that answers); and a stop that leaves nothing behind whatever
interrupts it.

Every child leads its own session, so a terminal's Ctrl-C reaches the supervisor
alone and it decides the order: SIGTERM to every child (each stops its own children:
gunicorn's workers, a worker's pool), up to a grace period, SIGKILL to whatever is left
of their process groups, and the children marked ``last`` (the private Redis, which
the others need while they stop) after all of them.

Signal handlers only record the signal and post an event (``queue.SimpleQueue.put``
is safe in a signal handler); the main thread acts on it, so no handler ever
interrupts a start or a stop half-way.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import FlowkitError
from ..orphans import orphan_guarded

#: The signals that stop the supervisor and everything it started.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: ANSI colours of the children's names, in the order they are started.
COLOURS = ("36", "35", "33", "32", "34", "31", "96", "95")


class Stopped(KeyboardInterrupt):
    """A stop signal arrived (SIGINT, SIGTERM, SIGHUP): a KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it and it reads as the Ctrl-C it usually is."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


class ChildFailed(FlowkitError):
    """A child exited, or never became ready, while the supervisor waited for it."""


@dataclass
class Child:
    """One supervised program. ``ready_line`` (a regex of its output) or ``probe`` (a
    callable polled until it returns True) says when it serves; ``quiet`` (a regex)
    drops lines nobody needs to read; ``last`` children are stopped after the rest."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    ready_line: str | None = None
    probe: Callable[[], bool] | None = None
    quiet: str | None = None
    last: bool = False
    proc: subprocess.Popen | None = None
    ready: bool = False
    colour: str = ""
    _pattern: re.Pattern | None = field(default=None, repr=False)
    _quiet: re.Pattern | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Children by name, one event queue, one log. Use ``with supervisor.signals():``
    around the work, and ``stop_all()`` in a ``finally``."""

    def __init__(self, out: IO[str] | None = None, colour: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.colour = wants_colour(self.out) if colour is None else colour
        self.children: dict[str, Child] = {}
        #: ("signal", signum) | ("ready", child, proc) | ("exited", child, proc) |
        #: ("changed", paths): everything the main thread acts on, in order.
        self.events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.signum: int | None = None  # the first stop signal
        self._hurry = False  # a second stop signal: kill what is left now
        self._lock = threading.Lock()
        self._width = 6

    # -- output -----------------------------------------------------------------------

    def say(self, text: str, name: str = "dev") -> None:
        """Print a line of the supervisor's own under ``name``."""
        self._write(name, "1" if self.colour else "", text)

    def _write(self, name: str, colour: str, line: str) -> None:
        label = f"{name:<{self._width}} |"
        if self.colour and colour:
            label = f"\033[{colour}m{label}\033[0m"
        with self._lock, contextlib.suppress(OSError, ValueError):
            # a closed terminal (SIGHUP) or pipe must not keep the supervisor from stopping
            self.out.write(f"{label} {line}\n")
            self.out.flush()

    def banner(self, lines: Sequence[str]) -> None:
        """Print a block of lines as they are (the URLs and exports a user copies)."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.out.write("".join(f"{line}\n" for line in lines))
            self.out.flush()

    # -- signals ------------------------------------------------------------------------

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Handle STOP_SIGNALS while the block runs (the previous handlers come back after)."""
        previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
            self.events.put(("signal", signum))
        else:
            self._hurry = True

    def check_signal(self) -> None:
        """Raise Stopped if a stop signal has arrived."""
        if self.signum is not None:
            raise Stopped(self.signum)

    # -- children -----------------------------------------------------------------------

    def add(self, child: Child) -> Child:
        child.colour = COLOURS[len(self.children) % len(COLOURS)]
        child._pattern = re.compile(child.ready_line) if child.ready_line else None
        child._quiet = re.compile(child.quiet) if child.quiet else None
        self.children[child.name] = child
        self._width = max(self._width, len(child.name))
        return child

    def start(self, name: str) -> Child:
        """Start (or start again) the child ``name``; its output goes to the log."""
        self.check_signal()  # nothing new starts once a stop signal came
        child = self.children[name]
        child.ready = False
        env = {**os.environ, **(child.env or {}), "PYTHONUNBUFFERED": "1"}
        child.proc = subprocess.Popen(
            orphan_guarded(child.argv), env=env, cwd=child.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True,  # its own group: signalled as one, never by the terminal
        )
        threading.Thread(target=self._pump, args=(child, child.proc), daemon=True,
                         name=f"log-{name}").start()
        if child.probe is not None:
            threading.Thread(target=self._poll_probe, args=(child, child.proc), daemon=True,
                             name=f"probe-{name}").start()
        return child

    def _pump(self, child: Child, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if child._pattern is not None and child._pattern.search(line):
                self.events.put(("ready", child, proc))
            if child._quiet is None or not child._quiet.search(line):
                self._write(child.name, child.colour, line)
        proc.wait()
        self.events.put(("exited", child, proc))

    def _poll_probe(self, child: Child, proc: subprocess.Popen) -> None:
        """Poll ``child.probe`` until it answers (a port has no event to await)."""
        assert child.probe is not None
        while proc.poll() is None and self.signum is None:
            try:
                if child.probe():
                    self.events.put(("ready", child, proc))
                    return
            except Exception:  # noqa: BLE001 - not up yet, whatever the probe says
                pass
            time.sleep(0.1)

    def wait_ready(self, names: Sequence[str], timeout: float,
                   on_event: Callable[[tuple[Any, ...]], None] | None = None) -> None:
        """Block until every child in ``names`` is ready. A stop signal raises Stopped; a
        child that exits or misses the deadline raises ChildFailed; other events go to
        ``on_event``, else back on the queue afterwards (another child's exit is news)."""
        deadline = time.monotonic() + timeout
        waiting = [n for n in names if not self.children[n].ready]
        deferred: list[tuple[Any, ...]] = []
        try:
            while waiting:
                event = self.next_event(deadline - time.monotonic())
                if event is None:
                    raise ChildFailed(f"{', '.join(waiting)} not ready within {timeout:.0f}s; "
                                      "see the log above")
                if event[0] == "ready":
                    self.handle(event)
                elif on_event is not None:
                    on_event(event)
                else:
                    deferred.append(event)
                for name in list(waiting):
                    child = self.children[name]
                    if child.ready:
                        waiting.remove(name)
                    elif child.proc is not None and child.proc.poll() is not None:
                        raise ChildFailed(f"{name} exited with code {child.proc.returncode} "
                                          "before it was ready; see its log above")
        finally:
            for event in deferred:
                self.events.put(event)

    def next_event(self, timeout: float) -> tuple[Any, ...] | None:
        """The next event, or None after ``timeout`` seconds. Raises Stopped on a signal."""
        self.check_signal()
        try:
            event = self.events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if event[0] == "signal":
            raise Stopped(event[1])
        return event

    def handle(self, event: tuple[Any, ...]) -> bool:
        """Mark a child ready on its ready event; True when the event was one and of the
        child's current process (one of a process since replaced changes nothing)."""
        if event[0] != "ready":
            return False
        _, child, proc = event
        if proc is not child.proc or child.ready:
            return False
        child.ready = True
        return True

    # -- stopping -----------------------------------------------------------------------

    def stop(self, names: Sequence[str], grace: float) -> None:
        """SIGTERM the children ``names``, wait up to ``grace`` seconds for them to exit
        (less after a second stop signal), then SIGKILL what is left of their groups."""
        children = [self.children[n] for n in names if self.children[n].proc is not None]
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)  # the leader stops its own children
        deadline = time.monotonic() + grace
        for child in children:
            while child.alive() and not self._hurry and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(0.1)  # a slice: a second signal cuts the wait short
        for child in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)  # the rest of its process group
            child.proc.wait()
            child.ready = False

    def stop_all(self, grace: float, last_grace: float = 5.0) -> None:
        """Stop every child: the others first, then those marked ``last``."""
        first = [c.name for c in self.children.values() if not c.last]
        last = [c.name for c in self.children.values() if c.last]
        self.stop(first, grace)
        self.stop(last, last_grace)


def wants_colour(out: IO[str]) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (https://no-color.org); FORCE_COLOR
    forces it on a pipe."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())
