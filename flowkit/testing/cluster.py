"""A private Redis Cluster of real ``redis-server`` processes, for the tests and the benchmark.

The store's Cluster support (``redis+cluster://``) is only worth what a real cluster
proves: slots spread over primaries, MOVED replies, one-slot scripts. So this starts
``primaries`` servers with ``--cluster-enabled yes`` on free loopback ports in a temp
dir, joins them with ``redis-cli --cluster create`` and waits until every node reports
``cluster_state:ok``; with ``replicas`` (per primary), until every replica's link to its
primary is up too (a failover test promotes them). Use as a context manager; everything
is removed after.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from .redis import free_port


def _low_port() -> int:
    """A free port Redis takes for a cluster node (at most 55535: it refuses higher ones
    even when the bus port is given)."""
    while (port := free_port()) > 55535:
        pass
    return port


class LocalCluster:
    """``primaries`` redis-server processes joined into one Redis Cluster, each with
    ``replicas`` replicas. ``ports`` are the primaries' (as created), ``replica_ports``
    the replicas'."""

    def __init__(self, primaries: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 15000) -> None:
        self.ports = [_low_port() for _ in range(primaries)]
        #: How long a node may be unreachable before the cluster fails it (Redis's
        #: cluster-node-timeout; a replica takes over from a failed primary after it).
        self.node_timeout_ms = node_timeout_ms
        self.replica_ports = [_low_port() for _ in range(primaries * replicas)]
        self.replicas = replicas
        self.dir = Path(tempfile.mkdtemp(prefix="flowkit-redis-cluster-"))
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> LocalCluster:
        exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if exe is None or cli is None:
            raise ConfigError("redis-server is not installed: run `apt-get install redis-server`.")
        for index in range(len(self.ports) + len(self.replica_ports)):
            self.procs.append(self._start_node(exe, index))
        nodes = [f"127.0.0.1:{port}" for port in self.ports + self.replica_ports]
        if len(nodes) == 1:  # redis-cli wants three masters; one node takes every slot itself
            self._cli(self.ports[0], "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        else:  # the first nodes named become the primaries
            subprocess.run([cli, "--cluster", "create", *nodes, "--cluster-replicas",
                            str(self.replicas), "--cluster-yes"],
                           check=True, capture_output=True, timeout=60)
        for port in self.ports + self.replica_ports:
            self._until(lambda p=port: "cluster_state:ok" in self._cli(p, "CLUSTER", "INFO"),
                        f"node {port} sees the cluster ok")
        for port in self.replica_ports:
            self._until(lambda p=port: "master_link_status:up" in self._cli(p, "INFO",
                                                                              "replication"),
                        f"replica {port} is in sync")
        return self

    def _start_node(self, exe: str, index: int, tries: int = 5) -> subprocess.Popen:
        """The ``index``-th node (primaries first), on its port; on a new one when another
        process took that port since it was picked (as may happen on a busy machine)."""
        for _ in range(tries):
            port = (self.ports + self.replica_ports)[index]
            node_dir = self.dir / str(port)
            node_dir.mkdir(exist_ok=True)
            proc = subprocess.Popen(
                [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-port", str(free_port()),
                 "--cluster-node-timeout", str(self.node_timeout_ms),
                 "--save", "", "--appendonly", "no", "--loglevel", "warning",
                 "--logfile", str(node_dir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 30.0
            while proc.poll() is None and time.monotonic() < deadline:
                # another Redis on the port would answer too: only this process's will do
                if self._pid_at(port) == proc.pid:
                    return proc
                time.sleep(0.05)  # a server still binding its port; nothing to await on
            if proc.poll() is None:  # up but silent
                self.procs.append(proc)  # close() stops it
                raise ConfigError(f"Redis Cluster: timed out waiting until node {port} answers.")
            log_file = node_dir / "redis.log"  # absent when it exited before opening it
            log = log_file.read_text(errors="replace") if log_file.exists() else "(no log)"
            if "already in use" not in log:
                raise ConfigError(f"Redis Cluster: node {port} exited: {log.strip()[-500:]}")
            if index < len(self.ports):
                self.ports[index] = _low_port()
            else:
                self.replica_ports[index - len(self.ports)] = _low_port()
        raise ConfigError(f"Redis Cluster: no free port for node {index} in {tries} tries.")

    def kill(self, port: int) -> None:
        """SIGKILL the node at ``port``: a crash, as far as the cluster can tell."""
        proc = self.procs[(self.ports + self.replica_ports).index(port)]
        proc.kill()
        proc.wait(10)

    def role(self, port: int) -> str:
        """``master`` or ``slave``, as the node at ``port`` says."""
        for line in self._cli(port, "INFO", "replication").splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return ""

    @classmethod
    def _pid_at(cls, port: int) -> int | None:
        """The process id of the Redis server answering on ``port``, if one does."""
        for line in cls._cli(port, "INFO", "server").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1].strip())
        return None

    @staticmethod
    def _cli(port: int, *command: str) -> str:
        """A command through redis-cli (flowkit's Redis clients belong to the store)."""
        done = subprocess.run([shutil.which("redis-cli") or "redis-cli", "-p", str(port),
                               *command], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    @staticmethod
    def _until(check, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)  # a server still binding its port or gossiping; nothing to await on
        raise ConfigError(f"Redis Cluster: timed out waiting until {what}.")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
