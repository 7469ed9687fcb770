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

``flowkit drain`` (:mod:`flowkit.commands.workers`) uses :func:`held_by` and
:func:`hand_over` to drain named workers remotely.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from celery import signals

from . import heartbeat as hb
from .config import get_settings
from .run import RUNNING
from .serialization import loads
from .store import get_store

log = logging.getLogger(__name__)

#: The token a revoked lease carries: it matches no attempt, so no heartbeat refreshes it.
HANDED_OVER = "handed-over"

# Revoke one lease if ``token`` still holds it; it lapses now. KEYS: inflight, leases.
# ARGV: leases member, step, token, now.
_REVOKE = """
local held = redis.call('HGET', KEYS[1], ARGV[2])
if not held then return 0 end
local lease = cjson.decode(held)
if lease.token ~= ARGV[3] then return 0 end
lease.token = '""" + HANDED_OVER + """'
lease.expires = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(lease))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""

#: True when steps run in the worker's main process (threads, solo, gevent, eventlet pools).
_in_process_pool = True
_draining = threading.Event()


def draining() -> bool:
    """True once this worker began shutting down: a step it receives now goes back to the queue.

    Celery's blocking consumer loop (threads pool) still takes messages for up to two
    seconds after SIGTERM; the step task refuses them through this flag.
    """
    return _draining.is_set()


def held_by(node: str) -> list[tuple[str, str, str]]:
    """(run id, step, token) of every step whose lease a process of Celery node ``node`` holds."""
    store = get_store()
    found = []
    for member in store.redis.zrange(store.keys.leases, 0, -1):
        run_id, _, step = member.partition(" ")
        raw = store.redis.hget(store.keys.inflight(run_id), step)
        if not raw:
            continue
        lease = loads(raw)
        if str(lease.get("worker", "")).rpartition(":")[0] == node and lease["token"] != HANDED_OVER:
            found.append((run_id, step, lease["token"]))
    return found


def hand_over(entries: list[tuple[str, str, str]], reason: str) -> list[str]:
    """Revoke these leases and restart their runs from checkpoints now; returns the run ids.

    A handover is deliberate, not a crash: it does not count toward FLOWKIT_MAX_RESTARTS.
    """
    from .reaper import resume

    store = get_store()
    revoke = store.redis.register_script(_REVOKE)
    restarted: list[str] = []
    for run_id, step, token in entries:
        now = time.time()
        if not revoke(
            keys=[store.keys.inflight(run_id), store.keys.leases],
            args=[f"{run_id} {step}", step, token, now],
        ):
            continue  # finished meanwhile, or already restarted
        gen, _ = store.restart(
            run_id, expected_state=RUNNING, reason=f"{reason} during step {step}", now=now,
            condition=f"lease:{step}",
        )
        if gen:
            resume(run_id, gen)
            restarted.append(run_id)
    return restarted


def drain(grace: float) -> None:
    """Wait up to ``grace`` s for this worker's steps, then hand the rest over and exit."""
    node = hb.node_name
    if _in_process_pool:
        idle = hb.heartbeat.wait_idle(grace)
    else:  # prefork: steps run in child processes, their leases say which node holds them
        deadline = time.monotonic() + grace
        while (busy := held_by(node)) and time.monotonic() < deadline:
            time.sleep(0.2)  # children report nothing to this process; Redis is the only view
        idle = not busy
    if idle:
        log.info("flowkit drain: %s is idle; shutting down", node)
        return
    entries = hb.heartbeat.active() if _in_process_pool else held_by(node)
    moved = hand_over(entries, f"worker {node} drained: grace of {grace:g}s ran out")
    log.warning("flowkit drain: handed over %d run(s) after %gs: %s", len(moved), grace, moved)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if _in_process_pool:
        # The handed-over attempts still run in this process's threads; ending the process
        # is the only way to stop them running in parallel with their successors.
        os._exit(0)
    os.kill(os.getpid(), signal.SIGQUIT)  # Celery's cold shutdown terminates the pool children


@signals.worker_ready.connect
def _remember_pool(sender=None, **_) -> None:
    global _in_process_pool
    from celery.concurrency.prefork import TaskPool as Prefork

    _in_process_pool = not isinstance(getattr(sender, "pool", None), Prefork)


@signals.worker_shutting_down.connect
def _on_shutting_down(sig=None, how=None, **_) -> None:
    # Runs inside Celery's signal handler: only set a flag and start a thread here.
    _draining.set()
    if how == "Warm":
        grace = get_settings().drain_grace
        threading.Thread(target=drain, args=(grace,), name="flowkit-drain", daemon=True).start()
