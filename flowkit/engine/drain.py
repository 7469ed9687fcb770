"""Draining a worker: finish running steps within a grace period, hand the rest over at once.

On SIGTERM Celery's warm shutdown stops consuming right away and then waits for the
running tasks without any limit. flowkit bounds that wait: once this worker is idle
it exits normally; if steps still run after FLOWKIT_DRAIN_GRACE seconds, each one is
handed over: its lease is revoked (so this process can no longer refresh it) and its
run restarted from its checkpoints on another worker immediately, and the process
exits. Nothing waits for the heartbeat lapse or the broker's visibility timeout.

Celery's own soft shutdown (``worker_soft_shutdown_timeout``, on SIGQUIT) is not used
for this: it sleeps the whole timeout even when the tasks are done, and it requeues
messages whose step lease is still held, which another worker would then drop as a
duplicate until the lease lapses.

The drain's thread is started when the worker is ready (:func:`arm`), not when SIGTERM
comes: Celery calls its shutdown handlers inside the signal handler, which on a gevent
worker runs in gevent's event loop, where nothing may block, and starting a thread blocks
until the thread runs (``BlockingSwitchOutError`` on every shutdown). The signal handler
only sets events (:func:`begin`).

The flag that says the worker drains (:func:`draining`) lives in a page of memory shared
with the processes this one forks: a prefork worker's steps run in its pool's children,
forked before SIGTERM came to the parent, and a flag of the parent's own memory (a
``threading.Event``, before) stayed clear in them, so a child went on running its chain's
next steps inline after SIGTERM (:func:`flowkit.engine.executor._run_following`), and the
step it began then outlived the grace and was handed over: it ran twice.

``flowkit drain`` (:mod:`flowkit.cli.workers`) uses :func:`held_by` and
:func:`hand_over` to drain named workers remotely. The worker's signals
(:mod:`flowkit.worker.signals`) call :func:`arm` and :func:`begin`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from ..config import get_settings, is_amqp
from ..states import RestartCause, RunState
from ..store import HANDED_OVER, get_store
from . import heartbeat as hb
from .control import Run, resume
from .processes import descendants_of, process_state

log = logging.getLogger(__name__)

#: True when steps run in the worker's main process (threads, solo, gevent, eventlet pools).
_in_process_pool = True
#: One byte, non-zero once this worker drains. An anonymous shared mapping, made at import
#: (in a worker's main process, before its pool forks): a prefork child reads the byte its
#: parent's SIGTERM sets, where a copy of a ``threading.Event`` would never change. Setting
#: it is one store, safe in a signal handler.
_draining = mmap.mmap(-1, 1)
#: Set by a warm shutdown: the armed drain thread starts draining.
_warm = threading.Event()
#: Set by SIGHUP (:func:`restart`): the worker executes its command again once drained.
_restarting = False
#: Set as a prefork drain sends its own SIGQUIT (Celery's cold shutdown ends the pool).
_quitting = False
_armed: threading.Thread | None = None
#: Puts this worker's unacknowledged deliveries back in their queues (arm's ``restore``).
_restore: Callable[[], None] | None = None
#: True while Celery's consumer may still take messages from the broker (arm's
#: ``consuming``); None when it cannot matter (a solo pool runs steps inside its loop).
_consuming: Callable[[], bool] | None = None
#: A prefork worker's pool processes (arm's ``children``).
_children: Callable[[], list[int]] | None = None
#: When Celery's consumer was seen stopped (time.monotonic()), once it was.
_consumer_stopped_at: float | None = None
#: On a Redis broker, how long after its consumer stopped this worker may still pop a
#: message it will never run: a BRPOP the consumer left waiting pops for kombu's
#: brpop_timeout (arm's ``brpop_timeout``, 1 s by default) more, and a message popped then is
#: in no queue and in no unacked list: it dies with the process. A handover (which sends its
#: runs' resume messages) waits until the consumer stopped and this long after.
_quiet_seconds = 1.5
#: How long a handover waits after the grace, at most, for Celery's consumer to stop (then
#: ``_quiet_seconds`` more from when it stopped). A gevent or
#: eventlet worker's blocking loop (synloop) notices the shutdown only between two
#: drain_events and runs one more after noticing it: about 3.5 s after SIGTERM here, up to
#: 6 s or so; a threads worker's event loop stops within a second.
CONSUMER_STOP_TIMEOUT = 10.0
#: Set while the grace ran out and steps are being handed over, then once that is done:
#: a step that stops because its run was handed over lets Celery's warm shutdown end, and
#: the process must not exit before the handover's messages are sent.
_handing_over = threading.Event()
_handed_over = threading.Event()


def draining() -> bool:
    """True once this worker began shutting down: a step it receives now goes back to the queue.

    Celery's consumer still takes messages until its loop notices the shutdown (seconds,
    on a gevent worker); the step task refuses them through this flag.
    """
    return _draining[0] != 0


def arm(in_process: bool, restore: Callable[[], None] | None = None,
        consuming: Callable[[], bool] | None = None, brpop_timeout: float = 1.0,
        children: Callable[[], list[int]] | None = None) -> None:
    """Called once the worker is ready, outside any signal handler: whether its steps run
    in this process (not prefork), and the drain's thread, waiting for a warm shutdown.
    ``restore`` gives the messages this worker received and did not acknowledge back to the
    broker; a handover calls it before the process ends (it exits without closing anything).
    ``consuming`` says whether Celery's consumer may still take messages: a handover on a
    Redis broker sends nothing before it stopped and its last BRPOP (``brpop_timeout``)
    expired. ``children``: a prefork worker's pool processes, whose leases are its own (a
    namesake's, another copy of the same unit on the host, are not).

    A worker stopped before it was ready runs no step and needs no drain.
    """
    global _in_process_pool, _armed, _restore, _consuming, _quiet_seconds, _children
    _in_process_pool, _restore, _consuming, _children = in_process, restore, consuming, children
    _quiet_seconds = brpop_timeout + 0.5
    if _armed is None:
        _armed = threading.Thread(target=_drain_when_warm, name="flowkit-drain", daemon=True)
        _armed.start()


def _drain_when_warm() -> None:
    _warm.wait()
    drain(get_settings().drain_grace)


def begin(how: str | None) -> None:
    """The worker is shutting down. Called inside Celery's signal handler (on gevent, in
    the event loop): it only sets events, never blocks. A warm shutdown drains for
    FLOWKIT_DRAIN_GRACE seconds in the thread :func:`arm` started. After a SIGHUP, a stop
    signal (SIGTERM, a Ctrl-C) means stop: the restart is called off."""
    global _restarting
    _draining[0] = 1
    if how == "Warm":
        _warm.set()
    if _restarting and not _quitting:  # (not the drain's own SIGQUIT, on prefork)
        _restarting = False
        atexit.unregister(reexec)


def restart(signum: int, frame: object) -> None:
    """SIGHUP, where Celery's restart handler was (a worker without a terminal): drain as a
    warm shutdown does, then execute the worker's command again (:func:`reexec`). Celery's
    own restart sent no ``worker_shutting_down``: the worker waited for its steps however
    long they took, with no grace and no handover."""
    from celery.worker import state

    global _restarting
    begin("Warm")
    _restarting = True
    atexit.register(reexec)  # after a drain that ended idle, when Celery's shutdown is over
    state.should_stop = 0  # Celery's loop stops, as its restart handler had it


def reexec() -> None:
    """Execute the worker's command again, in this process (its pid stays). Started as
    ``python -m celery``, as Celery's restart did not (it ran ``celery/__main__.py`` as a
    script, which cannot import its package: the worker never came back)."""
    from celery import platforms

    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("celery", "__main__.py")):
        argv = ["-m", "celery", *argv[1:]]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    platforms.close_open_fds([sys.__stdin__, sys.__stdout__, sys.__stderr__])
    os.execv(sys.executable, [sys.executable, *argv])


def finish_handover(timeout: float = 10.0) -> None:
    """Celery's shutdown is over (worker_shutdown): if a handover is under way, let it send
    its messages before the process ends."""
    if _handing_over.is_set():
        _handed_over.wait(timeout)


def held_by(node: str, pids: list[int] | None = None) -> list[tuple[str, str, str]]:
    """(run id, step, token) of every step whose lease a process of Celery node ``node``
    holds; of its processes ``pids`` only, when given: two workers of one name on a host
    (two copies of a unit) are told apart by nothing else, and draining one handed over the
    other's steps."""
    mine = None if pids is None else {f"{node}:{pid}" for pid in pids}
    return [
        (run_id, step, lease["token"])
        for run_id, step, lease in get_store().leases()
        if lease["token"] != HANDED_OVER and (
            str(lease.get("worker", "")).rpartition(":")[0] == node if mine is None
            else lease.get("worker") in mine)
    ]


def _pool_processes() -> list[int] | None:
    """This prefork worker's pool processes now (None when it is not told them: the node's
    name says then)."""
    try:
        return None if _children is None else list(_children())
    except Exception:  # noqa: BLE001 - the pool joined: none (by name, a namesake's steps)
        return []


def hand_over(entries: list[tuple[str, str, str]], reason: str) -> list[str]:
    """Revoke these leases and restart their runs from checkpoints now; returns the run ids.

    A handover is deliberate, not a crash: it does not count toward FLOWKIT_MAX_RESTARTS.
    """
    store = get_store()
    restarted: list[str] = []
    for run_id, step, token in entries:
        now = time.time()
        if not store.revoke_lease(run_id, step, token, now):
            continue  # finished meanwhile, or already restarted
        gen, _ = store.restart(
            run_id, expected_state=RunState.RUNNING, reason=f"{reason} during step {step}",
            now=now, cause=RestartCause.LEASE_LAPSED, step=step,
        )
        if gen:
            resume(Run.load(run_id), gen)
            restarted.append(run_id)
    return restarted


#: How long the programs of handed-over steps get to end on SIGTERM before SIGKILL.
PROGRAMS_GRACE_SECONDS = 1.0


def _end_programs() -> None:
    """End the programs this process's steps started (its descendants, the lease keeper
    aside) before it exits after a handover: reparented to init, a step's ``ffmpeg`` (or the
    ``sleep`` of a ``shell=True`` command) ran on beside the attempt that restarted the step
    elsewhere. SIGTERM, then SIGKILL what is left after :data:`PROGRAMS_GRACE_SECONDS`.
    Linux only (processes are read from ``/proc``)."""
    keeper = hb.heartbeat.link.pid()
    programs = descendants_of(os.getpid(), spare=keeper)
    for how in (signal.SIGTERM, signal.SIGKILL):
        if how == signal.SIGKILL and programs:
            log.warning("flowkit drain: %d program(s) of handed-over steps did not end on "
                        "SIGTERM: killed", len(programs))
        for pid in programs:
            with contextlib.suppress(OSError):
                os.kill(pid, how)
        deadline = time.monotonic() + PROGRAMS_GRACE_SECONDS
        while programs and time.monotonic() < deadline:
            programs = [pid for pid in programs if process_state(pid) not in ("X", "Z")]
            time.sleep(0.02)
        if not programs:
            return


def _watch_consumer(deadline: float) -> bool:
    """Until ``deadline``, or until Celery's consumer is seen stopped (noted in
    ``_consumer_stopped_at``): True as soon as this worker is idle."""
    global _consumer_stopped_at
    while _consuming is not None and _consumer_stopped_at is None:
        if not _consuming():
            _consumer_stopped_at = time.monotonic()
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if hb.heartbeat.wait_idle(min(0.05, left)):
            return True
    return False


def drain(grace: float) -> None:
    """Wait up to ``grace`` s for this worker's steps, then hand the rest over and exit."""
    node = hb.node_name
    if _in_process_pool:  # noting when the consumer stops, which a handover may wait for
        deadline = time.monotonic() + grace
        idle = _watch_consumer(deadline) or hb.heartbeat.wait_idle(
            max(0.0, deadline - time.monotonic()))
    else:  # prefork: steps run in child processes, their leases say which node holds them
        deadline = time.monotonic() + grace
        while (busy := held_by(node, _pool_processes())) and time.monotonic() < deadline:
            time.sleep(0.2)  # children report nothing to this process; Redis is the only view
        idle = not busy
    if idle:
        log.info("flowkit drain: %s is idle; shutting down", node)
        return
    if _in_process_pool and not is_amqp(get_settings().broker):
        # still running after the grace: the handover's messages wait until this worker's
        # consumer can no longer pop them (steps that finish meanwhile need no handover;
        # a consumer that does not stop within CONSUMER_STOP_TIMEOUT is not waited for)
        _watch_consumer(time.monotonic() + CONSUMER_STOP_TIMEOUT)
        if _consumer_stopped_at is not None:  # its last BRPOP's margin is never cut short
            quiet = _consumer_stopped_at + _quiet_seconds - time.monotonic()
            if quiet > 0:
                hb.heartbeat.wait_idle(quiet)
    entries = hb.heartbeat.active() if _in_process_pool else held_by(node, _pool_processes())
    if not entries:
        log.info("flowkit drain: %s is idle; shutting down", node)
        return
    _handing_over.set()
    try:
        moved = hand_over(entries, f"worker {node} drained: grace of {grace:g}s ran out")
        log.warning("flowkit drain: handed over %d run(s) after %gs: %s", len(moved), grace,
                    moved)
        if _in_process_pool:  # before Celery's shutdown, which waits for this, can end it
            _end_programs()
    finally:
        _handed_over.set()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if _in_process_pool:
        # The handed-over attempts still run in this process's threads; ending the process
        # is the only way to stop them running in parallel with their successors. Its
        # unacknowledged messages go back first: the consumer may have taken one of the
        # handover's own resume messages in its last moments of consuming
        if _restore is not None:
            try:
                _restore()
            except Exception:  # noqa: BLE001 - the exit must happen; the reaper covers the rest
                log.exception("flowkit drain: could not give back unacknowledged messages")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if _restarting:  # SIGHUP: the handed-over attempts end with this process's image
            reexec()
        os._exit(0)
    global _quitting
    _quitting = True
    os.kill(os.getpid(), signal.SIGQUIT)  # Celery's cold shutdown terminates the pool children
