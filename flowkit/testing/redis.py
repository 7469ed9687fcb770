"""A private redis-server on a free loopback port, for the demo and the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError
from ..orphans import orphan_guarded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """``redis-server`` in a temp dir; ``appendonly`` for crash tests. Use as a context manager."""

    def __init__(self, port: int | None = None, appendonly: bool = False,
                 ends_with_us: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        #: stopped by the kernel when this process dies, SIGKILL too (the demo's Redis);
        #: start() must then be called from a thread that lives as long as the process
        self.ends_with_us = ends_with_us
        self.dir = Path(tempfile.mkdtemp(prefix="flowkit-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> LocalRedis:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ConfigError(
                "redis-server is not installed: run `apt-get install redis-server` "
                "(or set FLOWKIT_REDIS_URL to a Redis you run)."
            )
        args = [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always", "--protected-mode", "yes", "--loglevel", "warning",
            "--maxclients", "10000",
        ]
        # a log file, not a pipe: an unread pipe fills up and stalls the server
        args += ["--logfile", str(self.dir / "redis.log")]
        if self.ends_with_us:
            args = orphan_guarded(args)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                log = self.dir / "redis.log"
                err = log.read_text() if log.exists() else ""
                raise ConfigError(f"redis-server exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)  # the server is still binding its port; nothing to await on
        raise ConfigError(f"redis-server did not answer on port {self.port} within {timeout}s.")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
