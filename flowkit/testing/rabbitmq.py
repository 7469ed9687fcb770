"""A private rabbitmq-server on free loopback ports, for the tests of the RabbitMQ paths.

Debian's ``rabbitmq-server`` command switches to the ``rabbitmq`` user and its system
directories; the broker underneath it (``/usr/lib/rabbitmq/bin/rabbitmq-server``) runs as
the calling user with every directory, port and the Erlang cookie taken from the
environment, so a test gets a node of its own in a temp dir beside any system one.

``consumer_timeout`` lowers RabbitMQ's delivery acknowledgement timeout (30 minutes by
default) so a test can outlive it in seconds; the broker checks it once per channel tick,
every 60 s by default, so the tick is lowered with it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from .redis import free_port

#: Where Debian's package puts the broker that does not switch users.
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class LocalRabbitMQ:
    """``rabbitmq-server`` in a temp dir, with the default ``guest`` user allowed over the
    loopback. Use as a context manager; :attr:`url` is its ``amqp://`` broker URL."""

    def __init__(self, consumer_timeout: float | None = None) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.consumer_timeout = consumer_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="flowkit-rabbitmq-"))
        self.node = f"flowkit{self.port}@localhost"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.dir),  # the Erlang cookie of this node and its CLI
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }

    def _write_config(self) -> None:
        (self.dir / "rabbitmq.conf").write_text("loopback_users = none\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        rabbit = []
        if self.consumer_timeout is not None:
            ms = int(self.consumer_timeout * 1000)
            rabbit += [f"{{consumer_timeout, {ms}}}", f"{{channel_tick_interval, {min(ms, 1000)}}}"]
        (self.dir / "advanced.config").write_text(f"[{{rabbit, [{', '.join(rabbit)}]}}].\n")

    def start(self, timeout: float = 60.0) -> LocalRabbitMQ:
        if not os.path.exists(SERVER):
            raise ConfigError(
                "rabbitmq-server is not installed: run `apt-get install rabbitmq-server` "
                "(or set FLOWKIT_BROKER_URL to a RabbitMQ you run)."
            )
        self._write_config()
        log = open(self.dir / "server.log", "w")  # noqa: SIM115 - the server's, closed with it
        self.proc = subprocess.Popen(
            [SERVER], env=self._env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its Erlang VM and epmd helpers go with it on stop
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until the node accepts AMQP connections (the port opens only once it booted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise ConfigError(f"rabbitmq-server exited at start: {self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"AMQP\x00\x00\x09\x01")
                    if s.recv(1):  # Connection.Start: the broker speaks
                        return
            except OSError:
                time.sleep(0.2)  # still booting; the port has nothing to await on
        raise ConfigError(f"rabbitmq-server did not answer on port {self.port} within {timeout}s.")

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRabbitMQ:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
