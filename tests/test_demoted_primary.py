"""A primary demoted while flowkit runs on a plain ``redis://`` URL: a managed Redis's
failover (ElastiCache, Memorystore) moves the host name to the new primary, and the old
one's open connections now reach a read-only replica. A write it refuses with READONLY
never ran: it is resent on a new connection within the budget, then said as that cause.
It was a raw ReadOnlyError: a step failed as if its code had raised, the API answered
500 and the CLI printed a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import redis

from flowkit import config
from flowkit.errors import StoreUnavailable
from flowkit.store import Store, demoted
from flowkit.testing import LocalRedis
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def servers():
    with LocalRedis() as primary, LocalRedis() as other:
        yield primary, other


def store_on(server: LocalRedis, seconds: float) -> Store:
    return Store(config.Settings().replace(redis_url=server.url, redis_retry_seconds=seconds))


def readonly_refusals(server: LocalRedis) -> int:
    stats = redis.Redis(port=server.port).info("errorstats")
    return stats.get("errorstat_READONLY", {}).get("count", 0)


def test_a_write_refused_as_read_only_is_resent_and_lands_once_the_url_reaches_a_primary(
        servers):
    primary, other = servers
    store = store_on(primary, seconds=20)
    store.save_checkpoint("r1", "before", '"a"')  # the pool's connection, opened on the primary
    admin = redis.Redis(port=primary.port)
    admin.replicaof("127.0.0.1", other.port)  # demoted, as by a failover
    outcome: list[object] = []
    writer = threading.Thread(
        target=lambda: outcome.append(store.save_checkpoint("r1", "after", '"b"')))
    writer.start()
    wait_until(lambda: readonly_refusals(primary) >= 1, message="the write refused as READONLY")
    admin.replicaof("no", "one")  # the URL reaches a primary again
    writer.join(timeout=30)
    assert outcome and not writer.is_alive()
    assert store.checkpoint("r1", "after") == '"b"'


def test_a_primary_demoted_for_good_is_an_outage_that_names_its_cause(servers):
    primary, other = servers
    store = store_on(primary, seconds=0.5)
    store.save_checkpoint("r1", "before", '"a"')
    redis.Redis(port=primary.port).replicaof("127.0.0.1", other.port)
    with pytest.raises(StoreUnavailable) as raised:
        store.save_checkpoint("r1", "after", '"b"')
    assert demoted(raised.value)
    assert readonly_refusals(primary) >= 2  # resent, not given up at the first refusal


def test_the_cli_says_a_demoted_primary_in_one_line(servers, flowkit_env):
    primary, other = servers
    redis.Redis(port=primary.port).replicaof("127.0.0.1", other.port)
    env = {**flowkit_env, "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{primary.port}/1",
           "FLOWKIT_REDIS_RETRY_SECONDS": "0.5"}
    said = subprocess.run([sys.executable, "-m", "flowkit.cli", "run", "simple", "-i", "n=1",
                           "--detach", "-A", "tests.app"], env={**os.environ, **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert said.returncode == 1, said.stderr
    assert said.stderr == (
        f"flowkit run: the Redis at redis://127.0.0.1:{primary.port}/1 became a read-only "
        "replica (a failover demoted it?): point FLOWKIT_REDIS_URL at the new primary, or at "
        "your sentinels (redis+sentinel://host:port,.../service/db), which follow a "
        "failover.\n")
