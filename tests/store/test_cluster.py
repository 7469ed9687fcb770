"""The store's Redis Cluster support, piece by piece, on a real three-primary cluster:
the ``redis+cluster://`` URL, one slot per script call, the store operations outside the
run scripts (schedules, wakers, rate buckets, concurrency slots, compaction, metrics),
``flowkit doctor``'s reading of the primaries, and the clear error for a missing broker.
Runs through real workers are in tests/chaos/test_cluster.py.
"""

from __future__ import annotations

import subprocess
import time

import pytest
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from flowkit import config
from flowkit.engine.broker import celery_config
from flowkit.engine.doctor import redis_settings
from flowkit.errors import ConfigError
from flowkit.serialization import dumps
from flowkit.store import get_store
from flowkit.store.keys import Keys
from flowkit.store.server import probe
from flowkit.urls import ClusterURL
from tests.cluster import cluster_fixture, primaries  # noqa: F401 - the cluster fixture
from tests.conftest import wait_until


@pytest.fixture
def store(cluster, flowkit_env, monkeypatch):
    for node in primaries(cluster):
        node.flushall()
    settings = config.get_settings().replace(redis_url=cluster.url)
    monkeypatch.setattr(config, "_settings", settings)
    return get_store()


def test_cluster_urls_parse_and_bad_ones_say_the_form():
    url = ClusterURL.parse("redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2")
    assert url == ClusterURL((("10.0.0.1", 7000), ("10.0.0.2", 6379)), "app", "s@cret")
    assert ClusterURL.parse("redis://localhost:6379/0") is None
    with pytest.raises(ConfigError, match=r"only database 0.*redis\+cluster://"):
        ClusterURL.parse("redis+cluster://h:7000/3")
    with pytest.raises(ConfigError, match="names at least one"):
        ClusterURL.parse("redis+cluster://")
    with pytest.raises(ConfigError, match=r"\*\*\*@h:x.*not host:port"):
        ClusterURL.parse("redis+cluster://u:secret@h:x")


def test_every_script_call_names_keys_of_one_slot():
    """The static half of the one-slot rule: the KEYS each script gets hash together."""
    keys = Keys("flowkit")
    for run_id in ("01HZX", "a", "run-42", "01M8XD3BASGNC10NAWB77JY82H"):
        assert len({key_slot(k.encode()) for k in keys.script_keys(run_id)}) == 1
    for group in ("tenant:a", "llm:openai"):
        assert len({key_slot(k.encode()) for k in keys.slots(group)}) == 1
    assert key_slot(keys.schedules.encode()) == key_slot(keys.schedules_due.encode())
    # the 16 shards are 16 slots, which a 3-primary cluster spreads over every primary
    assert len({key_slot(keys.running(shard).encode()) for shard in range(16)}) == 16


def test_store_operations_outside_the_run_scripts_work_on_the_cluster(store):
    assert isinstance(store.redis, RedisCluster)
    now = time.time()
    store.put_schedule({"id": "nightly", "workflow": "w"}, now - 1)
    assert [s for s, _ in store.due_schedules(now)] == ["nightly"]
    assert store.claim_tick("nightly", now - 1, now + 60)
    assert store.delete_schedule("nightly")

    store.add_waker("order:1", "run-a", "w1", 60)
    assert store.wakers("order:1") == [("run-a", "w1")]
    store.drop_waker("order:1", "run-a", "w1")
    store.owe_resume("run-a", 1)
    assert store.owed_resumes() == [("run-a", 1)]
    store.settle_resume("run-a", 1)
    store.record_sent("order:1", dumps({"ok": True}), now, 60)
    assert store.sent_since("order:1", now - 1) is not None

    assert store.take_rate("llm:test:m", [10, 10, 0, 0, 0, 60]) == 0
    store.settle_rate("llm:test:m", 0)
    got, _, _ = store.slots("tenant:a", 1, now, add="run-a", order=now)
    assert got
    assert [member for member, _ in store.slot_holders("tenant:a")] == ["run-a"]

    store.cache_put("c", "1", "d", "v", 60)
    assert store.cache_get("c", "1", "d") == "v"
    store.record_sweep(now, 1.0)
    assert store.last_sweep()["interval"] == 1.0
    assert store.trim_indexes(now - 3600) == 0
    assert store.active_runs() == 0 and store.metric_counts() == {}


def test_doctor_reads_every_primary_and_reports_the_weakest(cluster):
    nodes = primaries(cluster)
    assert probe(cluster.url)["maxmemory_policy"] == "noeviction"
    nodes[1].config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert probe(cluster.url)["maxmemory_policy"] == "allkeys-lru"
    finally:
        nodes[1].config_set("maxmemory-policy", "noeviction")
    # which node has AOF off is said: "AOF is off" named none of three
    for node in nodes:
        node.config_set("appendonly", "yes")
    nodes[2].config_set("appendonly", "no")
    try:
        [finding, *_] = redis_settings(probe(cluster.url), "store")
        assert finding.message.startswith(f"AOF is off on 127.0.0.1:{cluster.ports[2]}: ")
    finally:
        for node in nodes:
            node.config_set("appendonly", "no")  # as LocalCluster starts them


def test_a_cluster_store_without_a_broker_of_its_own_says_what_to_set(cluster):
    settings = config.get_settings().replace(redis_url=cluster.url, broker_url="",
                                             result_backend="")
    with pytest.raises(ConfigError, match="set FLOWKIT_BROKER_URL to a plain Redis"):
        celery_config(settings)
    amqp = settings.replace(broker_url="amqp://guest@localhost//")
    with pytest.raises(ConfigError, match="set FLOWKIT_RESULT_BACKEND"):
        celery_config(amqp)
    assert celery_config(settings.replace(broker_url="redis://b:6379/0"))["broker_url"] == \
        "redis://b:6379/0"


def test_a_node_whose_port_another_process_took_starts_on_another():
    """The ports are picked when the cluster is made; a busy machine's other process may
    bind one before the node starts: the node waited 30 s for a PING and the fixture failed."""
    import socket

    from flowkit.testing.cluster import LocalCluster

    one = LocalCluster(1)
    picked = one.ports[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", picked))  # bound, not listening: the node cannot have it
        with one:
            assert one.ports[0] != picked
            assert primaries(one)[0].ping()


def test_a_node_whose_port_another_redis_took_starts_on_another(tmp_path):
    """Another Redis on a picked port answers PING as well as the node would: the cluster
    was built on the stranger and failed after a timeout."""
    from flowkit.testing.cluster import LocalCluster

    one = LocalCluster(1)
    picked = one.ports[0]
    stranger = subprocess.Popen(
        ["redis-server", "--port", str(picked), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        redis.Redis(port=picked, retry=Retry(ExponentialBackoff(cap=0.05), 100),
                    retry_on_error=[redis.ConnectionError]).ping()  # up before the cluster
        with one:
            assert one.ports[0] != picked
            assert primaries(one)[0].ping()
        assert redis.Redis(port=picked).dbsize() == 0  # the stranger was left alone
    finally:
        stranger.kill()
        stranger.wait(10)


def cli(*args: str, url: str) -> subprocess.CompletedProcess:
    import os  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = {**os.environ, "FLOWKIT_REDIS_URL": url, "FLOWKIT_REDIS_RETRY_SECONDS": "1"}
    return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_cluster_url_that_reaches_no_cluster_or_a_node_without_it_is_one_line(
        cluster, flowkit_env):
    """Each was a redis-py traceback (RedisClusterUnreachableError, RedisClusterException
    from the CLI; MovedError from the doctor)."""
    from flowkit.testing import free_port  # noqa: PLC0415

    plain = flowkit_env["FLOWKIT_REDIS_URL"].replace("redis://", "redis+cluster://")
    plain = plain.rsplit("/", 1)[0]  # a cluster has one database
    not_a_cluster = cli("runs", url=plain)
    assert not_a_cluster.returncode == 2 and "Traceback" not in not_a_cluster.stderr
    assert not_a_cluster.stderr.strip() == (
        "flowkit runs: FLOWKIT_REDIS_URL names a Redis Cluster (redis+cluster://), but the "
        "Redis it reaches is not a cluster node (cluster-enabled no): point it at a cluster's "
        "nodes, or write redis://host:port/db for a single Redis.")
    down = cli("runs", url=f"redis+cluster://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert down.stderr.startswith("flowkit runs: cannot reach Redis at redis+cluster://")
    port = cluster.url.split("//")[1].split(",")[0].split(":")[1]
    one_node = cli("doctor", url=f"redis://127.0.0.1:{port}/0")
    assert "Traceback" not in one_node.stderr, one_node.stderr
    assert "reaches one node of a Redis Cluster (it answered MOVED): write it as " \
           "redis+cluster://host:port" in one_node.stdout + one_node.stderr


def test_a_write_a_primary_refuses_with_noreplicas_is_resent_then_said_as_an_outage(
        cluster, store, monkeypatch):
    """``min-replicas-to-write`` on a primary whose replica is down (or not caught up after
    a failover): the raw ``NOREPLICAS`` ResponseError reached the caller (a 500 from the
    API); it is resent within the budget, as for Sentinel, and said as an outage past it."""
    import threading

    from flowkit.errors import StoreUnavailable

    settings = config.get_settings().replace(redis_url=cluster.url, redis_retry_seconds=0.5)
    monkeypatch.setattr(config, "_settings", settings)
    store = get_store()
    key = Keys("flowkit").run("noreplicas")
    node = redis.Redis(port=store.redis.get_node_from_key(key).port)
    node.config_set("min-replicas-to-write", 1)  # these primaries have no replica
    try:
        with pytest.raises(StoreUnavailable, match="takes no writes now"):
            store.save_checkpoint("noreplicas", "0:a", dumps({"n": 1}))
        # the replica is back within the resend window: the write goes through
        monkeypatch.setattr(config, "_settings", settings.replace(redis_retry_seconds=10))
        threading.Timer(0.15, node.config_set, ("min-replicas-to-write", 0)).start()
        assert get_store().save_checkpoint("noreplicas", "0:a", dumps({"n": 1})) == dumps(
            {"n": 1})
    finally:
        node.config_set("min-replicas-to-write", 0)


def test_a_worker_given_a_plain_url_at_a_cluster_node_refuses_to_start_saying_the_form(
        cluster, flowkit_env):
    """It started "ready" (its checks touched no key, so no MOVED) and logged a traceback
    at each heartbeat, every 2 s, for good."""
    import os  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.conftest import ROOT  # noqa: PLC0415

    plain = f"redis://127.0.0.1:{cluster.ports[0]}/0"
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.app", "worker", "--pool", "threads",
         "--queues", "startup-checks", "--without-gossip", "--without-mingle"],
        env={**os.environ, **flowkit_env, "FLOWKIT_REDIS_URL": plain}, cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "refuses to start" in line]
    assert lines == ["flowkit: worker refuses to start: FLOWKIT_REDIS_URL reaches one node of a "
                     "Redis Cluster (it answered MOVED): write it as redis+cluster://host:port "
                     "(every node is found from one)."]
    assert "Traceback" not in result.stderr


def test_the_doctor_says_a_cluster_node_is_down_not_to_start_the_cluster(flowkit_env):
    """A primary killed, its replica not yet promoted, the URL's first node answering: the
    doctor said "Redis at redis+cluster://... does not answer. Start it"."""
    from flowkit.engine.doctor import examine  # noqa: PLC0415
    from flowkit.store.store import Store  # noqa: PLC0415
    from flowkit.testing.cluster import LocalCluster  # noqa: PLC0415

    with LocalCluster(3) as down:
        down.kill(down.ports[2])
        store = Store(config.get_settings().replace(redis_url=down.url, redis_retry_seconds=0))
        [finding] = examine(None, "flowkit", None, store=store)
    assert finding.level == "failure"
    assert finding.message.startswith(f"The Redis Cluster at {down.url}, or one of its nodes, "
                                      "does not answer (")
    assert finding.fix.startswith("Start the node that is down, or wait for its replica")


@pytest.mark.long  # waits for a replica's promotion: beside the rest (scripts/test)
def test_the_doctor_names_a_failed_node_and_the_primary_left_without_a_replica(flowkit_env):
    """A primary crashed and its replica took over: the cluster serves, every answering
    node read well, and the doctor said "All is well", though one more crash would stop
    the runs in those slots."""
    from flowkit.engine.doctor import examine  # noqa: PLC0415
    from flowkit.store.store import Store  # noqa: PLC0415
    from flowkit.testing.cluster import LocalCluster  # noqa: PLC0415

    with LocalCluster(3, replicas=1, node_timeout_ms=1000) as cluster:
        settings = config.get_settings().replace(redis_url=cluster.url, redis_retry_seconds=0)
        assert [f for f in examine(None, "flowkit", None, store=Store(settings))
                if f.check == "redis.cluster"] == [], "a whole cluster has nothing to say"
        killed = cluster.ports[0]
        cluster.kill(killed)
        promoted = wait_until(lambda: next((p for p in cluster.replica_ports
                                            if cluster.role(p) == "master"), None), 30,
                              "a replica to take over from the killed primary")
        def said() -> list:
            # a client made while the other nodes still list the killed primary may pick it
            # as the node it reads the command table from: made again until they do not
            try:
                store = Store(settings)
            except redis.ConnectionError:
                return []
            return [f for f in examine(None, "flowkit", None, store=store)
                    if f.check == "redis.cluster"]

        found = wait_until(said, 30, "the cluster to mark the killed node failed")
    assert [f.level for f in found] == ["warning"]
    assert found[0].message == (
        f"Redis Cluster node 127.0.0.1:{killed} is failed (down or cut off): the cluster "
        f"serves without it, and primary 127.0.0.1:{promoted} has no replica left: its crash "
        "would stop the runs in its slots until it is back.")
    assert found[0].fix.startswith("Start the failed node again")


def test_a_cluster_that_refuses_the_password_is_said_so_and_a_worker_refuses_to_start(
        cluster, flowkit_env):
    """It was "cannot reach Redis; start it": the worker and web started, and the worker
    logged a traceback at each heartbeat."""
    import os  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from tests.conftest import ROOT  # noqa: PLC0415

    nodes = primaries(cluster)
    for node in nodes:
        node.config_set("requirepass", "right")
    try:
        with pytest.raises(ConfigError, match=r"^flowkit's Redis refused its credentials \("):
            probe(cluster.url.replace("redis+cluster://", "redis+cluster://:wrong@"))
        assert probe(cluster.url.replace("redis+cluster://", "redis+cluster://:right@"))
        doctor = cli("doctor", url=cluster.url.replace("redis+cluster://", "redis+cluster://:x@"))
        assert "Traceback" not in doctor.stderr and "cannot reach" not in doctor.stdout + (
            doctor.stderr)
        assert "refused" in doctor.stdout + doctor.stderr
        worker = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tests.app", "worker", "--pool", "threads",
             "--queues", "startup-checks", "--without-gossip", "--without-mingle"],
            env={**os.environ, **flowkit_env, "FLOWKIT_REDIS_URL": cluster.url.replace(
                "redis+cluster://", "redis+cluster://:wrong@")}, cwd=ROOT,
            capture_output=True, text=True, timeout=60)
        assert worker.returncode == 2, worker.stderr[-2000:]
        [line] = [line for line in worker.stderr.splitlines() if "refuses to start" in line]
        assert line.startswith("flowkit: worker refuses to start: flowkit's Redis refused its "
                               "credentials (")
        assert "Traceback" not in worker.stderr
    finally:
        for node in nodes:
            redis.Redis(port=node.connection_pool.connection_kwargs["port"], password="right",
                        socket_timeout=5).config_set("requirepass", "")
