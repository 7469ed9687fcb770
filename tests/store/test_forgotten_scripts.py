"""A script the server forgot between redis-py's reload and its call still runs: redis-py
answers NoScriptError by loading the script and calling EVALSHA once more, and a script
cache flushed in between (a Cluster failover's new primary, unknown to the client when
the load went to the primaries it knew) failed the call: a step's emit failed so, once."""

from __future__ import annotations

import threading

import pytest
import redis

from flowkit import config
from flowkit.states import WaitOutcome
from flowkit.store import Store
from flowkit.testing import LocalRedis

pytestmark = pytest.mark.integration


def test_scripts_run_while_the_server_keeps_forgetting_them():
    with LocalRedis() as server:
        store = Store(config.Settings().replace(redis_url=server.url))
        admin = redis.Redis(port=server.port)
        stop = threading.Event()

        def forget() -> None:
            while not stop.is_set():
                admin.script_flush()

        flusher = threading.Thread(target=forget)
        flusher.start()
        try:
            outcomes = [store.fire_timer(f"r{i}", "k", 1.0)[0] for i in range(300)]
        finally:
            stop.set()
            flusher.join()
        assert set(outcomes) == {WaitOutcome.NOT_WAITING}  # each ran: no such run
