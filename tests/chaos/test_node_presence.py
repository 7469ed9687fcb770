"""A worker node's record (what it announced and its load), beaten by its main process only."""

from __future__ import annotations

import re
import time

import pytest
import redis

from flowkit import config
from flowkit.engine import control
from flowkit.serialization import loads
from flowkit.store import get_store
from tests.chaos.conftest import open_gate, wait_for, waiting
from tests.chaos.workflows import held, tick

#: A worker process of its own, and a few heartbeat intervals watched: beside the rest.
pytestmark = pytest.mark.long

#: The node record's load as a MONITOR line shows its HSET (quotes escaped or not).
HELD = re.compile(r'\\?"held\\?": ?(\d+)')
RECEIVED_AT = re.compile(r'\\?"received_at\\?": ?([0-9.e+]+)')


def node_writes(node: str, count: int) -> list[tuple[int, float]]:
    """The next ``count`` writes of ``node``'s record, (held, received_at) of each, as Redis
    saw them (MONITOR: every command, none missed between two reads). Another node's are
    not counted: the session's in-thread worker, started by a test before this one in the
    same session, beats its own record (idle, its last message long ago) into this Redis."""
    store = get_store()
    watcher = redis.Redis.from_url(config.get_settings().redis_url, socket_timeout=20,
                                   decode_responses=True)
    writes: list[tuple[int, float]] = []
    with watcher.monitor() as monitor:
        while len(writes) < count:
            command = monitor.next_command()["command"]
            if command.lower().startswith(f"hset {store.keys.nodes} {node} ".lower()):
                held_, received = HELD.search(command), RECEIVED_AT.search(command)
                assert held_ and received, command
                writes.append((int(held_.group(1)), float(received.group(1))))
    watcher.close()
    return writes


def test_a_prefork_child_forked_after_ready_does_not_beat_the_node_s_load(chaos_app, deployment):
    """A child the pool forks after the worker was ready (``--max-tasks-per-child``,
    ``--max-memory-per-child``, a child killed) inherited the node's record and beat it
    with the load frozen at its fork, every interval, over its parent's: a busy worker read
    as one with free slots that took nothing for long (the reaper: "its consumer is stuck:
    restart the worker"), a draining one as consuming. Now only the main process sends it:
    every write says the step it runs is held, and when its message came."""
    # the run's two steps in one task (inline), in one child forked after ready
    a = deployment.worker("presence", pool="prefork", concurrency=1,
                          extra=("--max-tasks-per-child", "1"),
                          FLOWKIT_INLINE_STEPS_SECONDS="120")
    quick = tick.start({"n": 0})
    assert quick.wait(30).state == "succeeded"  # its child exits, another is forked
    [before] = [e.data["worker"] for e in quick.events() if e.type == "step.started"]
    node = before.rpartition(":")[0]
    assert node.startswith("presence@") and before != f"{node}:{a.pid}"
    # the new child beats (its own presence) once it runs: forked before the next message
    store = get_store()
    known = {before, f"{node}:{a.pid}"}
    wait_for(lambda: [w for w in store.redis.zrange(store.keys.workers, 0, -1)
                      if w.startswith(f"{node}:") and w not in known], 20,
             "worker a's pool to fork a new child")
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    # in a child forked after ready: that one, or the next if it took another message first
    # (a reaper sweep) and was replaced in turn
    assert waiting(run)["worker"] not in known
    # the parent's heartbeat counted the held step; then watch a few intervals of beats
    wait_for(lambda: loads(store.redis.hget(store.keys.nodes, node) or "{}").get("held") == 1,
             10, "worker a to beat its held step")
    writes = node_writes(node, 8)
    try:
        assert {held_ for held_, _ in writes} == {1}, writes
        assert len({at for _, at in writes}) == 1, writes  # nothing taken since: one time
    finally:
        open_gate(run)
    assert run.wait(30).state == "succeeded"


NAMESAKE = "another live worker beats as node"


def test_a_second_live_worker_of_the_same_name_is_an_error_a_restarted_one_is_not(
    chaos_app, deployment
):
    """Two workers of one name were told apart by nothing and nothing said so: the SIGTERM
    drain of one (prefork) handed over the other's steps, which then ran twice. The second
    now logs an ERROR as it starts; a worker restarted under its own name (the first dead,
    its record still there) does not."""
    first = deployment.worker("a")
    # what it announced (its pid), not only its first beat (which comes a moment before)
    wait_for(lambda: [w for w in control.live_workers() if w["name"].startswith("a@")
                      and "pid" in w], 10, "worker a to announce itself")
    second = deployment.worker("a")
    wait_for(lambda: any(NAMESAKE in line for line in list(second.lines)), 10,
             "the second worker a to log that a namesake lives")
    assert any("ERROR" in line and f"(pid {first.pid})" in line for line in second.lines)
    assert not any(NAMESAKE in line for line in first.lines)

    second.kill()
    first.kill()
    again = deployment.worker("a")
    # its watch ends a lapse after it started (FAST: 2 s); past that no ERROR can come
    time.sleep(float(deployment.env["FLOWKIT_HEARTBEAT_LAPSE"]) + 1)
    assert not any(NAMESAKE in line for line in again.lines), again.output()
