"""The lease keeper: a small process that beats the leases of a worker's running steps.

Why a process: a thread of the worker needs the GIL to beat, so one C call that holds it
past the lapse (``json.loads`` of a large document, a regex that backtracks, a C extension
that never releases it) or, on gevent, a step that does not yield, stopped every beat of
its process, and the reaper restarted a step that was still running: it ran twice, and a
step that always took that long failed its run after ``FLOWKIT_MAX_RESTARTS``. The keeper
has an interpreter of its own, so it beats whatever the worker's steps do with theirs.

One keeper per worker node: its main process starts it before a prefork pool forks, so
the children inherit the pipe to it; a process with no keeper to inherit (an in-thread
test worker, say) starts its own. Each process says what it holds, one JSON line per
change (:class:`Link`): ``["+", pid, worker, run, step, token]`` and ``["-", pid, run,
step, token]`` for a step's lease, ``["hold", pid, group, member]`` and ``["let_go", pid,
group, member]`` for a component slot; ``["alive", pid]`` from its heartbeat thread each
interval; ``["reset", pid]`` before all it holds again, after a write it could not make.
The keeper beats, every ``FLOWKIT_HEARTBEAT_INTERVAL``, what each process holds while that
process is alive, not stopped (``SIGSTOP``: its leases lapse as they did when its own
thread stopped) and not silent for ``FLOWKIT_HEARTBEAT_STALL`` (wedged: a C call that never
gives the GIL back), and forgets a process once it is gone: the reaper restarts its steps
after the lapse, as before. It exits when no process holds its pipe any more (end of file).

It writes one byte to its stdout once it beats; until then, and after it exited, each
process's heartbeat thread beats its own leases (:mod:`flowkit.engine.heartbeat`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any

from ..config import Settings
from ..errors import FlowkitError
from .processes import process_stat

log = logging.getLogger(__name__)

#: Linux's fcntl to grow a pipe: a gevent worker that starts hundreds of steps before the
#: keeper runs fills the default 64 KiB, and a full pipe cannot be written without waiting.
F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
#: The settings a keeper beats by, the only ones it is sent (not the API's keys and secret):
#: another value of one of them (``configure(redis_url=...)``) needs another keeper.
KEEPER_SETTINGS = ("redis_url", "key_prefix", "redis_socket_timeout", "redis_retry_seconds",
                   "connection_pool_size", "heartbeat_interval", "heartbeat_lapse",
                   "heartbeat_stall", "heartbeat_keeper")


#: The keeper's program. A signal to the worker's process group (a Ctrl-C, systemd's default
#: KillMode, a SIGHUP) is the worker's to act on: the keeper beats on until its pipe closes,
#: from before its imports (it died of a SIGTERM that came while it imported).
KEEPER_COMMAND = ("import signal\n"
                  "for name in ('SIGINT', 'SIGTERM', 'SIGHUP'):\n"
                  "    signal.signal(getattr(signal, name), signal.SIG_IGN)\n"
                  "from flowkit.engine.keeper import main\n"
                  "main()\n")


def keeper_settings(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in KEEPER_SETTINGS}


class Link:
    """This process's side of its node's keeper: the pipe to it, and whether it beats.

    Made at import, in a worker's main process before its pool forks: ``_beating`` is an
    anonymous shared mapping, so a prefork child reads the byte its parent sets when the
    keeper's first beat is heard (and clears when the keeper exits).
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        self._proc: subprocess.Popen | None = None
        self._ack: int | None = None
        self._settings: Settings | None = None
        self._beating = mmap.mmap(-1, 1)
        #: This process could not write to the keeper (it stopped reading, or a line was too
        #: long): it beats its own leases until :meth:`tick` told the keeper all again.
        self._lost = False
        #: The keeper is gone (its pipe broke): this process beats its own leases for good.
        self._gone = False
        #: A keeper was started (by this process, or by the parent it was forked from).
        self._tried = False
        #: Keepers this process stopped, not yet reaped.
        self._retired: list[subprocess.Popen] = []
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        # the child writes to the parent's keeper, but it is not the child's to restart
        if self._ack is not None:
            with contextlib.suppress(OSError):
                os.close(self._ack)
        self._proc, self._ack, self._retired = None, None, []

    def pid(self) -> int | None:
        """The keeper's process id, in the process that started it."""
        return None if self._proc is None else self._proc.pid

    def started(self) -> bool:
        """A keeper was started, whatever became of it (each process starts one at most)."""
        return self._tried

    def beating(self) -> bool:
        """True when the keeper beats this process's leases (its own thread need not)."""
        return self._fd is not None and not self._lost and self._beating[0] == 1

    def start(self, settings: Settings, held: list[list]) -> None:
        """Start a keeper for this process (and the children it forks from now on), and
        tell it what this process holds already (``held``: messages, as :meth:`send`)."""
        self._tried = True
        read, write = os.pipe()
        ack_read, ack_write = os.pipe()
        with contextlib.suppress(OSError):  # not Linux: the default size
            fcntl.fcntl(write, F_SETPIPE_SZ, PIPE_BYTES)
        package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package, *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            self._proc = subprocess.Popen(
                # not ``-m``: the package imports this module first, and runpy warns of it;
                # the worker's signals ignored before the imports (half a second), as after
                [sys.executable, "-c", KEEPER_COMMAND],
                stdin=read, stdout=ack_write,
                env=env, close_fds=True)
        except OSError as exc:
            log.warning("flowkit: could not start the lease keeper (%s): this worker's "
                        "processes beat their leases themselves", exc)
            for fd in (read, write, ack_read, ack_write):
                os.close(fd)
            self._lost = self._gone = True
            return
        os.close(read)
        os.close(ack_write)
        os.set_blocking(write, False)
        os.set_blocking(ack_read, False)
        self._fd, self._ack, self._settings = write, ack_read, settings
        self._lost = self._gone = False
        self._beating[0] = 0
        self.send(["settings", keeper_settings(settings)])
        for message in held:
            self.send(message)

    def send(self, message: list) -> None:
        """Tell the keeper one change; never waits (a keeper that does not read is lost)."""
        if self._fd is not None and not self._lost and not self._write(message):
            self._lost = True
            if not self._gone:
                log.warning("flowkit: could not tell the lease keeper %s: this process beats "
                            "its own leases until it can again", message[0])

    def _write(self, message: list) -> bool:
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if len(line) > select.PIPE_BUF:  # not written whole at once: it could interleave
            return False  # with another process's line
        try:
            return os.write(self._fd, line) == len(line)
        except BrokenPipeError:  # it exited
            self._gone = True
        except OSError:  # BlockingIOError: it stopped reading, for now
            pass
        return False

    def tick(self, pid: int, held: list[list]) -> None:
        """Each heartbeat of this process's thread: tell the keeper this process runs (it
        stops beating for one silent for FLOWKIT_HEARTBEAT_STALL), or, after a write that
        failed, all it holds again."""
        if self._fd is None or self._gone:
            return
        if not self._lost:
            self.send(["alive", pid])
        elif all(self._write(message) for message in [["reset", pid], *held]):
            self._lost = False
            log.info("flowkit: the lease keeper beats this process's leases again")

    def check(self, settings: Settings, held: list[list]) -> None:
        """From this process's heartbeat thread: hear the keeper's first beat, see it
        exit, and start another when this process's settings changed (another Redis).
        A process that did not start it (a prefork child) and changed them beats its own
        leases: the keeper beats where its parent's settings said."""
        self._retired = [proc for proc in self._retired if proc.poll() is None]
        if self._proc is None:
            if self._fd is not None and not self._gone and self._settings is not None and \
                    keeper_settings(settings) != keeper_settings(self._settings):
                self._lost = self._gone = True
                log.warning("flowkit: this process's settings are not its lease keeper's: "
                            "it beats its own leases")
            return
        if self._settings is None or \
                keeper_settings(settings) != keeper_settings(self._settings):
            self.stop()
            self._tried = False  # another starts once this process holds something
            if held and settings.heartbeat_keeper:
                self.start(settings, held)
            return
        with contextlib.suppress(BlockingIOError):
            if self._ack is not None and os.read(self._ack, 64):
                self._beating[0] = 1
        code = self._proc.poll()
        if code is not None:
            log.warning("flowkit: the lease keeper exited (%s): this worker's processes beat "
                        "their leases themselves", code)
            self.stop()
            self._lost = self._gone = True

    def stop(self) -> None:
        """Close this process's end: a keeper nobody else holds exits."""
        self._beating[0] = 0
        for fd in (self._fd, self._ack):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._proc is not None:
            self._retired.append(self._proc)  # reaped once it exited (check)
        self._fd = self._ack = self._proc = None


# --- the keeper process ---------------------------------------------------------------


class Keeper:
    """What the worker's processes hold, beaten for those alive and not stopped."""

    def __init__(self, settings: Settings) -> None:
        from ..store.store import Store  # the keeper's only reason to import the store

        self.store = Store(settings)
        self.lapse, self.stall = settings.heartbeat_lapse, settings.heartbeat_stall
        self.leases: dict[int, dict[tuple[str, str], str]] = {}
        self.slots: dict[int, set[tuple[str, str]]] = {}
        self.workers: dict[int, str] = {}
        #: When each process started, read at its first message: a process that died and
        #: whose pid another took is gone, not beaten for (its steps would never lapse).
        self.births: dict[int, str] = {}
        #: When each process last said anything (time.monotonic()): its heartbeat thread
        #: says it runs each interval (``alive``).
        self.heard: dict[int, float] = {}
        #: Processes silent past FLOWKIT_HEARTBEAT_STALL, not beaten for (said once).
        self.stalled: set[int] = set()

    def apply(self, message: list) -> None:
        kind, pid = message[0], int(message[1])
        if pid not in self.births:
            self.births[pid] = process_stat(pid)[1]
        self.heard[pid] = time.monotonic()
        if pid in self.stalled:
            self.stalled.discard(pid)
            log.warning("flowkit lease keeper: process %d runs again", pid)
        if kind == "reset":  # all it holds follows: what the keeper knew may have missed some
            self.leases.pop(pid, None)
            self.slots.pop(pid, None)
        elif kind == "+":
            self.workers[pid] = message[2]
            self.leases.setdefault(pid, {})[(message[3], message[4])] = message[5]
        elif kind == "-":
            held = self.leases.get(pid, {})
            if held.get((message[2], message[3])) == message[4]:
                del held[(message[2], message[3])]
        elif kind == "hold":
            self.slots.setdefault(pid, set()).add((message[2], message[3]))
        elif kind == "let_go":
            self.slots.get(pid, set()).discard((message[2], message[3]))

    def beat(self) -> None:
        now = time.time()
        for pid in list(self.heard):  # every process that said anything
            state, born = process_stat(pid)
            if state in ("X", "Z") or born != self.births.get(pid, born):
                # gone (or its pid another's): its leases lapse, the reaper restarts its steps
                for held in (self.leases, self.slots, self.workers, self.births, self.heard):
                    held.pop(pid, None)
                self.stalled.discard(pid)
                continue
            leases, slots = self.leases.get(pid, {}), self.slots.get(pid, set())
            if not (leases or slots) or state in ("T", "t"):
                continue  # stopped: frozen as a whole, as its own thread would be
            silent = time.monotonic() - self.heard[pid]
            if silent > self.stall:  # wedged (a C call that never returns the GIL, a gevent
                # step in an endless loop): its steps go to other workers, as before the keeper
                if pid not in self.stalled:
                    self.stalled.add(pid)
                    log.warning("flowkit lease keeper: process %d has not run for %.0fs "
                                "(FLOWKIT_HEARTBEAT_STALL): its leases lapse", pid, silent)
                continue
            try:
                if leases:
                    self.store.heartbeat([(run, step, token) for (run, step), token
                                          in leases.items()], self.workers[pid], now)
                if slots:
                    self.store.hold_slots(list(slots), now + self.lapse)
            except FlowkitError as exc:  # Redis away: its one line (see Heartbeat.beat_or_say)
                log.warning("flowkit lease keeper: heartbeat failed: %s", exc)
            except Exception:  # keep trying, the reaper judges lapses
                log.warning("flowkit lease keeper: heartbeat failed", exc_info=True)


def main() -> None:
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # as KEEPER_COMMAND did, when run otherwise
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    keeper: Keeper | None = None
    interval, pending, acked = 1.0, b"", False
    next_beat = time.monotonic()
    while True:
        wait = None if keeper is None else max(0.0, next_beat - time.monotonic())
        ready, _, _ = select.select([0], [], [], wait)
        if ready:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return  # no process holds the pipe: the worker is gone
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                try:
                    message = json.loads(line)
                except ValueError:  # never written so; skipped rather than beating nothing
                    log.warning("flowkit lease keeper: unreadable message %r", line[:200])
                    continue
                if message[0] == "settings":
                    settings = Settings(**message[1])
                    keeper, interval = Keeper(settings), settings.heartbeat_interval
                elif keeper is not None:
                    keeper.apply(message)
        if keeper is not None and time.monotonic() >= next_beat:
            keeper.beat()
            next_beat = time.monotonic() + interval
            if not acked:
                with contextlib.suppress(OSError):  # the process that started it is gone
                    os.write(1, b"1")
                acked = True

