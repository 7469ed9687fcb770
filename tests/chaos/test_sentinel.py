"""The store on Redis Sentinel (``redis+sentinel://``): a failover under running workflows.

A primary, a replica and three sentinels, all real ``redis-server`` processes (the
sentinels in ``--sentinel`` mode); the Celery broker is a Redis of its own, as the store's
failover is what is under test. Two worker processes and beat run the ten-step workflow;
mid-run the sentinels fail the primary over to the replica. Every run finishes with its
whole output, and the workers, beat and this process all follow the new primary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from flowkit import config
from flowkit.errors import ConfigError
from flowkit.serialization import loads
from flowkit.store import get_store
from flowkit.store.connection import client
from flowkit.testing import LocalRedis, free_port
from tests.chaos.conftest import Deployment, _restore_app, _use_app, deployed, under_way, wait_for
from tests.chaos.workflows import ten
from tests.conftest import FAST, ROOT

#: Each test waits for three sentinels to agree on a primary (or a failover): beside the rest.
pytestmark = pytest.mark.long

SERVICE = "flowkit"
RUNS = 6


class Replica(LocalRedis):
    """A redis-server replicating ``primary``."""

    def __init__(self, primary: LocalRedis) -> None:
        super().__init__(appendonly=True)
        self.primary = primary

    def start(self) -> Replica:
        exe = shutil.which("redis-server")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--logfile", str(self.dir / "redis.log"),
             "--replicaof", "127.0.0.1", str(self.primary.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self


class Sentinels:
    """Three sentinels watching ``primary`` (quorum 2), each from a config file of its own
    (a sentinel rewrites its file as it learns the topology)."""

    def __init__(self, primary: LocalRedis, password: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="flowkit-sentinel-"))
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen] = []
        self.primary = primary
        self.password = password

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/1"

    def start(self) -> Sentinels:
        for port in self.ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"logfile {self.dir / f'sentinel-{port}.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                + (f"requirepass {self.password}\n" if self.password else "")
            )
            self.procs.append(subprocess.Popen(
                [shutil.which("redis-server"), str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        return self

    def client(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.ports[index], decode_responses=True, socket_timeout=2,
                           password=self.password)

    def primary_port(self, index: int = 0) -> int | None:
        try:
            addr = self.client(index).sentinel_get_master_addr_by_name(SERVICE)
        except redis.ConnectionError:
            return None  # not listening yet
        return int(addr[1]) if addr else None

    def all_name(self, port: int) -> bool:
        """Every sentinel names ``port`` the primary (a client may ask any of them)."""
        return all(self.primary_port(i) == port for i in range(3))

    def know_the_replica(self) -> bool:
        try:
            return all(self.client(i).sentinel_slaves(SERVICE) for i in range(3))
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sentinel_group():
    with LocalRedis(appendonly=True) as primary, Replica(primary) as replica:
        sentinels = Sentinels(primary).start()
        try:
            wait_for(lambda: replica_in_sync(replica), 20, "the replica to sync")
            wait_for(sentinels.know_the_replica, 30, "every sentinel to see the replica")
            yield primary, replica, sentinels
        finally:
            sentinels.stop()


def replica_offset(replica: LocalRedis) -> int:
    return int(redis.Redis(port=replica.port).info("replication").get("slave_repl_offset", 0))


def replica_in_sync(replica: LocalRedis) -> bool:
    info = redis.Redis(port=replica.port).info("replication")
    return info.get("master_link_status") == "up"


def pause_writes(primary: LocalRedis) -> redis.Redis:
    """Hold every write to ``primary`` (until :func:`fail_over` lifts the pause)."""
    old = redis.Redis(port=primary.port, decode_responses=True)
    old.execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
    return old


def fail_over(old: redis.Redis, replica: LocalRedis, sentinels: Sentinels) -> None:
    """Fail the primary whose writes are paused (``old``) over to ``replica`` as Redis's own
    FAILOVER does: writes to the old primary pause (they block, then meet a replica and are
    resent to the new primary), so none is taken after the replica caught up.

    A crash instead loses the writes not yet replicated; the reaper re-drives what they
    were (steps are at-least-once). The pause outlasts every wait below, and the old
    primary is demoted here before the pause is lifted, once every sentinel names the new
    primary (a client may ask any of them): the sentinels did not demote it while it was
    paused (a 30 s wait for it timed out), and a pause that expired first let it take, and
    later lose, writes from stale connections (a step body's side effect lost while its
    checkpoint reached the new primary)."""
    wait_for(lambda: replica_offset(replica) >= old.info("replication")["master_repl_offset"],
             10, "the replica to catch up")
    sentinels.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
    wait_for(lambda: sentinels.all_name(replica.port), 30,
             "every sentinel to name the replica the primary")
    old.execute_command("REPLICAOF", "127.0.0.1", replica.port)
    wait_for(lambda: old.info("replication")["role"] == "slave", 30,
             "the old primary to become a replica")
    old.execute_command("CLIENT", "UNPAUSE")  # its held writes now meet a replica


def test_a_write_held_at_a_failover_is_resent_to_the_new_primary(sentinel_group):
    """A write in flight when its primary is demoted meets READONLY there; the resend asks
    the sentinels again and lands on the new primary. (redis-py 8 alone reconnected the
    resend to the demoted primary, so the write failed once the retry budget was spent.)"""
    primary, replica, sentinels = sentinel_group
    store = client(config.Settings(redis_url=sentinels.url, redis_retry_seconds=10))
    store.set("held", 0)  # connected, through the sentinels, to the primary
    old = pause_writes(primary)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(store.incr, "held")
        wait_for(lambda: any(c["cmd"] == "incrby" and "b" in c["flags"]
                             for c in old.client_list()), 10, "the write to be held")
        fail_over(old, replica, sentinels)
        assert held.result(timeout=60) == 1
    assert redis.Redis(port=replica.port, db=1).get("held") == b"1"


def test_runs_finish_across_a_sentinel_failover(sentinel_group, flowkit_env, tmp_path,
                                                  monkeypatch):
    primary, replica, sentinels = sentinel_group
    with LocalRedis() as broker, deployed(monkeypatch, tmp_path, sentinels.url, broker.url,
                                          FLOWKIT_STALL_TIMEOUT="10",
                                          FLOWKIT_QUEUED_TIMEOUT="10") as deployment:
        store = get_store()
        runs = under_way(deployment, ten, RUNS, {"n": 0, "chunks": 2, "pause": 0.2})

        fail_over(pause_writes(primary), replica, sentinels)
        done_at_failover = sum(len(store.checkpoints(r.id)) for r in runs)

        # What the new primary holds decides (a client of its own: an idle connection
        # of this process may still point at the old primary, now a replica).
        promoted = redis.Redis(port=replica.port, db=1, decode_responses=True)
        wait_for(lambda: all(promoted.hget(store.keys.run(r.id), "state") == "succeeded"
                             for r in runs), 120, "every run to succeed on the new primary")
    assert done_at_failover < RUNS * 10, "the runs ended before the failover: it proved nothing"
    assert promoted.info("replication")["role"] == "master"
    for run in runs:
        assert loads(promoted.hget(store.keys.run(run.id), "output"))["n"] == 10
        finished_steps = {key.rsplit(":", 2)[-2] + ":" + key.rsplit(":", 1)[-1]
                          for key in promoted.scan_iter(f"chaos:finished:{run.id}:*", count=1000)}
        assert finished_steps == {f"{i}:chaos.work" for i in range(10)}
        assert promoted.hlen(store.keys.checkpoints(run.id)) == 10


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1:1", "redis+sentinel://h:x/svc"])
def test_a_malformed_sentinel_url_says_the_form(url):
    with pytest.raises(ConfigError, match=r"redis\+sentinel://\[\[user\]:password@\]host:port"):
        client(config.Settings(redis_url=url))


def test_the_broker_defaults_to_the_same_sentinels(sentinel_group, flowkit_env, tmp_path,
                                                   monkeypatch):
    """Only FLOWKIT_REDIS_URL set: Celery's broker and result backend find the primary
    through the sentinels too (kombu's sentinel:// transport, master_name)."""
    _, replica, sentinels = sentinel_group
    env = {**FAST, "PYTHONPATH": ROOT, "FLOWKIT_DEFAULT_QUEUE": "chaos",
           "FLOWKIT_REDIS_URL": sentinels.url, "FLOWKIT_BROKER_URL": ""}
    settings = config.get_settings().replace(redis_url=sentinels.url, broker_url=None,
                                              result_backend=None)
    monkeypatch.setattr(config, "_settings", settings)
    previous = _use_app(settings)
    deployment = Deployment(env, tmp_path)
    try:
        deployment.worker("a")
        run = ten.start({"n": 0, "chunks": 1, "pause": 0})
        assert run.wait(60).state == "succeeded"
        primary = redis.Redis(port=sentinels.primary_port(), db=1)
        assert primary.exists("_kombu.binding.chaos")  # the queue lives on the primary, db 1
    finally:
        deployment.stop()
        _restore_app(previous)


def write_through_a_failover(sentinel_group) -> tuple[list[int], list[int], redis.Redis]:
    """Writes through flowkit's client before, during and after ``SENTINEL FAILOVER``, which
    does not pause the old primary: it takes writes until the sentinels demote it,
    seconds after the switch, and drops them then. Returns the writes acknowledged, those
    of them begun once every sentinel named the new primary, and the new primary."""
    primary, replica, sentinels = sentinel_group
    store = client(config.Settings(redis_url=sentinels.url, redis_retry_seconds=30))
    old = redis.Redis(port=primary.port, decode_responses=True)
    acknowledged, after_switch, n = [], [], 0
    switched = False

    def write() -> None:
        nonlocal n
        begun = switched
        store.set(f"w:{n}", 1)  # acknowledged once it returns
        acknowledged.append(n)
        if begun:
            after_switch.append(n)
        n += 1

    for _ in range(20):
        write()
    sentinels.client().execute_command("SENTINEL", "FAILOVER", SERVICE)
    wait_for(lambda: write() or sentinels.all_name(replica.port), 30,
             "every sentinel to name the replica the primary")
    switched = True
    wait_for(lambda: write() or old.info("replication")["role"] == "slave", 60,
             "the sentinels to demote the old primary")
    for _ in range(20):
        write()
    promoted = redis.Redis(port=replica.port, db=1, decode_responses=True)
    assert promoted.info("replication")["role"] == "master"
    return acknowledged, after_switch, promoted


def test_writes_after_a_sentinel_failover_reach_the_new_primary_at_once(sentinel_group):
    """A client kept its pooled connections to the old primary until the sentinels demoted
    it, seconds after the switch, and lost every write of those seconds (start() returned
    ids of runs then not found): it now follows the sentinels' +switch-master at once.
    (The writes of the second the sentinels take to see the promotion they made can still
    be lost: see the next test.)"""
    acknowledged, after_switch, promoted = write_through_a_failover(sentinel_group)
    assert len(after_switch) > 20, "the old primary was demoted too soon to prove anything"
    lost = [i for i in after_switch if not promoted.exists(f"w:{i}")]
    assert not lost, f"{len(lost)} of {len(after_switch)} writes after the switch lost: {lost[:20]}"


def test_min_replicas_to_write_loses_at_most_the_writes_in_flight_at_a_sentinel_failover(
        sentinel_group):
    """With min-replicas-to-write 1 (the README's advice) the old primary refuses the writes
    it would lose (NOREPLICAS, once its replica left it), and flowkit resends them, asking
    the sentinels again, until a primary with its replica takes them. What Redis leaves is
    the instant of the promotion: the setting checks that a replica is connected, not that
    it holds the write (WAIT would), so a write acknowledged as the replica stopped
    replicating can be lost; a fresh-clone run lost one of 53. Without the setting, the
    writes of those seconds were lost (469 of 490)."""
    primary, replica, _ = sentinel_group
    for node in (primary, replica):
        redis.Redis(port=node.port).config_set("min-replicas-to-write", 1)
    acknowledged, _, promoted = write_through_a_failover(sentinel_group)
    lost = [i for i in acknowledged if not promoted.exists(f"w:{i}")]
    assert len(lost) <= IN_FLIGHT_AT_THE_PROMOTION, (
        f"{len(lost)} of {len(acknowledged)} acknowledged writes lost: {lost[:20]}")


#: Writes (one at a time) acknowledged in the instant the promoted replica stopped
#: replicating from the old primary: a bound, not a count.
IN_FLIGHT_AT_THE_PROMOTION = 3


def test_sentinels_that_refuse_their_credentials_are_said_to_not_a_wrong_service(flowkit_env):
    """redis-py files a sentinel's NOAUTH or WRONGPASS under "no master found": the CLI and
    the doctor said to check the service name."""
    with LocalRedis() as primary:
        sentinels = Sentinels(primary, password="sentinel-secret").start()
        try:
            wait_for(lambda: sentinels.primary_port() == primary.port, 20,
                     "the sentinels to name the primary")
            for given in ("", "?sentinel_password=wrong"):
                env = {**os.environ, **flowkit_env, "FLOWKIT_REDIS_URL": sentinels.url + given,
                       "FLOWKIT_REDIS_RETRY_SECONDS": "0.3"}  # a refusal is said at once
                for command in (["runs"], ["doctor"]):
                    said = subprocess.run([sys.executable, "-m", "flowkit.cli", *command],
                                          env=env, capture_output=True, text=True, timeout=60)
                    out = said.stdout + said.stderr
                    assert said.returncode != 0 and "refused their credentials" in out, out
                    assert "?sentinel_password=" in out and "service name" not in out, out
            env = {**os.environ, **flowkit_env,
                   "FLOWKIT_REDIS_URL": sentinels.url + "?sentinel_password=sentinel-secret"}
            listed = subprocess.run([sys.executable, "-m", "flowkit.cli", "runs"], env=env,
                                    capture_output=True, text=True, timeout=60)
            assert listed.returncode == 0, listed.stderr
        finally:
            sentinels.stop()


def test_the_doctor_reads_the_replicas_too_the_next_primary(sentinel_group):
    """A replica with AOF off or an evicting policy becomes the primary at the next failover:
    the doctor read only the primary and said every check passed."""
    from flowkit.store import server

    primary, replica, sentinels = sentinel_group
    store = client(config.Settings(redis_url=sentinels.url))
    assert server.describe(store)["aof_enabled"] is True
    weak = redis.Redis(port=replica.port)
    weak.config_set("appendonly", "no")
    weak.config_set("maxmemory", 1 << 30)
    weak.config_set("maxmemory-policy", "allkeys-lru")
    found = server.describe(store)
    assert found["aof_enabled"] is False
    assert found["aof_off"] == [f"127.0.0.1:{replica.port}"]  # the doctor names it
    assert found["maxmemory_policy"] == "allkeys-lru" and found["maxmemory"] == 1 << 30


def test_the_switch_watch_leaves_a_sentinel_that_stops_answering(monkeypatch, caplog):
    """A frozen or cut-off sentinel keeps its socket open: the watch stayed subscribed to it
    for good and never heard the switches the other sentinels announced. (Two plain
    redis-servers stand in for sentinels: the watch only subscribes, pings and listens.)"""
    import logging
    import os
    import signal

    from redis.sentinel import Sentinel as RedisSentinel

    from flowkit.store import failover

    monkeypatch.setattr(failover, "PING_SECONDS", 0.3, raising=False)
    monkeypatch.setattr(failover, "POLL_SECONDS", 0.1)
    with LocalRedis() as frozen, LocalRedis() as other:
        watch = failover.SwitchWatch(RedisSentinel(
            [("127.0.0.1", frozen.port), ("127.0.0.1", other.port)],
            sentinel_kwargs={"socket_timeout": 2}), "svc")
        subscribers = redis.Redis(port=frozen.port)
        with caplog.at_level(logging.INFO, logger="flowkit.store.failover"):
            watch.ensure_running()
            wait_for(lambda: subscribers.pubsub_numsub(failover.SWITCH_CHANNEL)[0][1] == 1, 10,
                     "the watch to listen to the first sentinel")
            os.kill(frozen.proc.pid, signal.SIGSTOP)
            try:
                announcer = redis.Redis(port=other.port)
                wait_for(lambda: announcer.publish(
                    failover.SWITCH_CHANNEL, "svc 127.0.0.1 1 127.0.0.1 2") and
                    "switched the primary of svc to 127.0.0.1 2" in caplog.text, 10,
                    "the watch to hear the other sentinel's switch")
            finally:
                os.kill(frozen.proc.pid, signal.SIGCONT)
