"""Credentials Redis refuses fail at once with a line saying where they go, never retried
as if Redis were down (redis-py files AuthenticationError under ConnectionError)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from flowkit import config
from flowkit.errors import ConfigError
from flowkit.store.store import Store
from flowkit.testing import LocalRedis

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guarded_redis():
    with LocalRedis() as server:
        redis.Redis(port=server.port).config_set("requirepass", "s3cret")
        yield server


def connections(server: LocalRedis) -> int:
    admin = redis.Redis(port=server.port, password="s3cret")
    return int(admin.info("stats")["total_connections_received"])


@pytest.mark.parametrize("auth", ["", ":wrong@"], ids=["no-password", "wrong-password"])
def test_refused_credentials_fail_at_once_with_what_to_do(guarded_redis, auth):
    store = Store(config.Settings(redis_url=f"redis://{auth}127.0.0.1:{guarded_redis.port}/0",
                                  redis_retry_seconds=30))
    before = connections(guarded_redis)
    with pytest.raises(ConfigError, match=r"refused its credentials .*redis://:PASSWORD@host"):
        store.get_run("01X")
    # One connection (and the admin's own): a resend would have opened more within the
    # 30 s budget before giving up.
    assert connections(guarded_redis) - before <= 2


def test_the_right_password_works(guarded_redis):
    store = Store(config.Settings(redis_url=f"redis://:s3cret@127.0.0.1:{guarded_redis.port}/0"))
    assert store.get_run("01X") == {}


def test_the_cli_says_it_in_one_line(guarded_redis, flowkit_env):
    import os

    url = f"redis://:wrong@127.0.0.1:{guarded_redis.port}/0"
    result = subprocess.run([sys.executable, "-m", "flowkit.cli", "status", "01X"],
                            env={**os.environ, "FLOWKIT_REDIS_URL": url}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2  # a setting to fix, as from every command
    assert result.stderr.startswith("flowkit status: flowkit's Redis refused its credentials")
    assert len(result.stderr.strip().splitlines()) == 1
