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
