"""Two deployments on one Redis database, each with its own FLOWKIT_KEY_PREFIX: Celery's
keys (the queues, kombu's bindings, results) were not prefixed, so each one's worker took
the other's messages from the shared ``flowkit`` list and dropped them (no such run in its
store): runs sat queued, then failed as stranded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis

from tests.conftest import ROOT

pytestmark = pytest.mark.long  # two worker processes and six CLI runs

#: What a start of ``simple`` pushes with its run (one round trip: engine.publish).
FUSED = """
import json
import tests.app
from flowkit.engine import canvas, publish
from flowkit.store import get_store
from tests import workflows as wf
sig, args = canvas.first_canvas(wf.simple, "run-probe", {"n": 1}, "flowkit")
fused = publish.first_messages(get_store(), "run-probe", sig, args)
print(json.dumps(None if fused is None else [key for key, _ in fused.items]))
"""


def test_deployments_with_their_own_key_prefix_share_a_redis_database(
        flowkit_env, start_worker):
    envs = {name: {**flowkit_env, "FLOWKIT_KEY_PREFIX": name} for name in ("blue", "green")}
    for name, env in envs.items():
        start_worker(name, env_overrides=env)
    for n in range(3):
        for name, env in envs.items():
            run = subprocess.run(
                [sys.executable, "-m", "flowkit.cli", "run", "simple", "-i", f"n={n}",
                 "-A", "tests.workflows", "--json"], env=env, cwd=ROOT, capture_output=True,
                text=True, timeout=60)  # a message the other took: it waited for good
            assert run.returncode == 0, (name, run.stdout[-2000:], run.stderr)
    keys = [k.decode() for k in redis.Redis.from_url(flowkit_env["FLOWKIT_BROKER_URL"]).scan_iter(
        match="*kombu.binding.*")]
    assert {k.split(":")[0] for k in keys} >= {"blue", "green"}, keys
    # a start still pushes its first message with its run, under the prefix (the prefix
    # turned that off: a start was two round trips, and not one atomic write)
    fused = subprocess.run([sys.executable, "-c", FUSED], env=envs["blue"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    keys = json.loads(fused.stdout or "null")
    assert keys and all(key.startswith("blue:flowkit") for key in keys), fused.stdout + fused.stderr
