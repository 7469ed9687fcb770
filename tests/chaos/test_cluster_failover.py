"""The store on Redis Cluster across failovers: three primaries, each with a replica, all
real ``redis-server`` processes; two worker processes and beat run ten-step workflows while
a replica takes over from its primary.

- Planned (``CLUSTER FAILOVER`` on every replica in turn, as a rolling Redis upgrade does:
  the primary holds its writes until the replica has caught up, then the replica answers
  for the slots and the old primary redirects): every run finishes and none is restarted,
  as the clients follow the new primaries at once (MOVED); no step is abandoned. The runs'
  fifth step holds until the failovers are over, so however long Redis takes over them
  (tens of seconds on a loaded machine) every run spans all three.
- A crash (a primary SIGKILLed; its replica promoted once the cluster's node timeout
  passes): the slots are unserved meanwhile and writes not yet replicated are lost, so
  steps are abandoned and re-driven, and every run still finishes with its whole output.
  The primary killed is the one that holds the first run's keys.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from flowkit.serialization import loads
from flowkit.store import Store, get_store
from flowkit.testing import LocalRedis
from flowkit.testing.cluster import LocalCluster
from tests.chaos.conftest import deployed, under_way, wait_for
from tests.chaos.workflows import ten_held, ten_retried

RUNS = 6


@contextmanager
def runs_on(cluster: LocalCluster, monkeypatch, tmp_path, workflow
            ) -> Iterator[tuple[Store, list]]:
    """Two workers and beat on ``cluster`` (the broker on a Redis of its own), and RUNS
    ten-step runs of ``workflow`` under way."""
    with LocalRedis() as broker, deployed(monkeypatch, tmp_path, cluster.url, broker.url,
                                          FLOWKIT_STALL_TIMEOUT="10",
                                          FLOWKIT_QUEUED_TIMEOUT="10") as deployment:
        yield get_store(), under_way(deployment, workflow, RUNS,
                                     {"n": 0, "chunks": 2, "pause": 0.1})


def finished(store: Store, runs: list, within: float) -> None:
    try:
        wait_for(lambda: all(s == "succeeded" for s in store.run_states([r.id for r in runs])),
                 within, "every run to succeed")
    except AssertionError:
        for run in runs:  # what each run was doing, for the failure's report
            record = store.get_run(run.id)
            print(run.id, {k: record.get(k) for k in ("state", "gen", "restarts", "error",
                                                      "worker", "updated_at")},
                  [(e.type, e.data.get("step"), e.data.get("reason"))
                   for e in run.events()[-6:]])
        raise
    for run in runs:
        assert loads(store.get_run(run.id)["output"])["n"] == 10
        assert len(store.checkpoints(run.id)) == 10


def done(store: Store, runs: list) -> int:
    return sum(len(store.checkpoints(r.id)) for r in runs)


@pytest.mark.long  # mostly waiting for three failovers: beside the rest (scripts/test)
def test_runs_finish_across_planned_failovers_of_every_primary(flowkit_env, tmp_path,
                                                                monkeypatch):
    with LocalCluster(3, replicas=1) as cluster, \
            runs_on(cluster, monkeypatch, tmp_path, ten_held) as (store, runs):
        for replica in cluster.replica_ports:
            take_over(cluster, replica)
        wait_for(lambda: all(cluster.role(port) == "slave" for port in cluster.ports), 30,
                 "every old primary to follow its successor")
        assert not any(s == "succeeded" for s in store.run_states([r.id for r in runs]))
        for run in runs:  # their held steps, on the new primaries, go on to the end
            store.redis.rpush(f"chaos:gate:{run.id}", "open")
        finished(store, runs, 120)
        for run in runs:  # no step abandoned or re-driven
            assert int(store.get_run(run.id)["restarts"]) == 0


@pytest.mark.long  # mostly waiting for the replica's promotion: beside the rest (scripts/test)
def test_runs_finish_after_a_primary_crashes_and_its_replica_takes_over(flowkit_env, tmp_path,
                                                                         monkeypatch):
    # the steps' own Redis calls (their side-effect counters) fail while the slots are
    # unserved, as any user code's would: retried, as such a step should be
    with LocalCluster(3, replicas=1, node_timeout_ms=1000) as cluster, \
            runs_on(cluster, monkeypatch, tmp_path, ten_retried) as (store, runs):
        done_at_crash = done(store, runs)
        cluster.kill(store.redis.get_node_from_key(store.keys.run(runs[0].id)).port)
        wait_for(lambda: sum(cluster.role(p) == "master" for p in cluster.replica_ports) == 1,
                 30, "a replica to take over from the killed primary")
        finished(store, runs, 200)
        assert done_at_crash < RUNS * 10, "the runs ended before the crash"


@pytest.mark.long  # mostly waiting for the runs around a slot's migration
def test_runs_start_and_finish_while_a_reshard_moves_their_shard_s_slot(flowkit_env, tmp_path,
                                                                       monkeypatch):
    """A reshard (``redis-cli --cluster reshard``, a primary added or rebalanced) moves a
    slot's keys a batch at a time; a run's scripts, whose keys share their shard's slot,
    meet TRYAGAIN while the slot is half moved. redis-py gave up after 0.4 s: steps failed
    with ClusterError (their messages consumed, a run left running without a lease) and
    start() raised it to its caller."""
    with LocalCluster(3) as cluster, \
            runs_on(cluster, monkeypatch, tmp_path, ten_retried) as (store, runs):
        key = store.keys.run(runs[0].id)
        slot = store.redis.keyslot(key)
        source = store.redis.get_node_from_key(key).port
        target = next(port for port in cluster.ports if port != source)
        started: list = []
        failed: list[BaseException] = []
        moving = threading.Event()

        def start_runs() -> None:  # starts land in every shard, the moving one too
            while moving.is_set():
                try:
                    started.append(ten_retried.start({"n": 0, "chunks": 1, "pause": 0.01}))
                except BaseException as exc:  # noqa: BLE001 - what the test is about
                    failed.append(exc)
                time.sleep(0.02)

        moving.set()
        starter = threading.Thread(target=start_runs)
        starter.start()
        try:
            migrate_slot(cluster, slot, source, target)
        finally:
            moving.clear()
            starter.join(30)
        assert failed == [] and started
        finished(store, runs + started, 200)


def migrate_slot(cluster: LocalCluster, slot: int, source: int, target: int) -> None:
    """Move ``slot`` from the primary at ``source`` to the one at ``target`` as redis-cli's
    reshard does (IMPORTING, MIGRATING, MIGRATE, NODE), one key at a time, slowly: the
    slot stays half moved for seconds."""
    src, dst = redis.Redis(port=source), redis.Redis(port=target)
    src_id, dst_id = (r.execute_command("CLUSTER", "MYID").decode() for r in (src, dst))
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1):
        src.execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        time.sleep(0.1)
    for port in cluster.ports:
        redis.Redis(port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def take_over(cluster, replica: int, tries: int = 3) -> None:
    """A manual CLUSTER FAILOVER of ``replica``, asked again when Redis let one time out (on
    a loaded machine one did: the replica stayed a replica past 30 s), as Redis's docs say."""
    for attempt in range(1, tries + 1):
        redis.Redis(port=replica).execute_command("CLUSTER", "FAILOVER")
        try:
            wait_for(lambda p=replica: cluster.role(p) == "master", 15,
                     f"replica {replica} to take over")
            return
        except AssertionError:
            if attempt == tries:
                raise
