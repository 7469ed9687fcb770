"""``flowkit run --url`` and ``flowkit follow --url``: the CLI against a real HTTP server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import flowkit
from tests.conftest import open_gate

from .conftest import API_KEY, make_app, serve
from .helpers import start

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(flowkit_env, store):
    # No FLOWKIT_REDIS_URL: the CLI must go through HTTP only.
    return {k: v for k, v in {**os.environ, **flowkit_env}.items()
            if k not in ("FLOWKIT_REDIS_URL", "FLOWKIT_BROKER_URL")}


def test_run_over_http_follows_the_sse_stream(api, env):
    result = cli("run", "chatty", "-i", "n=3", "--url", api.url, "--api-key", API_KEY, env=env)
    assert result.returncode == 0, result.stderr
    assert "step 0:t.talker 67% word 2/3" in result.stdout
    assert "0:t.talker > alphabetagamma" in result.stdout
    assert json.loads(result.stdout[result.stdout.index("{"):]) == {"n": 3, "words": 3}


def test_a_run_token_follows_its_own_run(api, env, client):
    created = client.post("/workflows/simple/runs", json={"n": 1}).json()
    result = cli("follow", created["id"], "--url", api.url, "--token", created["token"], "--json",
                 env={**env, "FLOWKIT_URL": ""})
    assert result.returncode == 0, result.stderr
    types = [json.loads(line)["type"] for line in result.stdout.splitlines()]
    assert types[0] == "run.queued" and types[-1] == "run.succeeded"
    assert types.count("step.completed") == 2


def test_a_run_token_expiring_mid_run_ends_the_follow_with_what_to_do(env, worker):
    """The server ends a token's stream when the token expires: the CLI says so in one line
    (exit 2) with the event id to go on from, instead of taking the notice for an event.

    The token lives 5 s: the CLI's interpreter start takes over 1 s on a loaded 2-core
    machine, and the token must still be good when the CLI first connects."""
    for served in serve(make_app(token_ttl=5)):
        created = start(served.client(), "chain3", {"n": 1})
        handle = flowkit.get_run(created["id"])
        try:
            result = cli("follow", created["id"], "--url", served.url, "--token",
                         created["token"], env={**env, "FLOWKIT_URL": ""})
        finally:
            open_gate(handle, "gated")
        assert result.returncode == 2, result.stderr
        assert "The run token expired while following run" in result.stderr
        cursor = re.search(r"`--after (\S+)` goes on from here", result.stderr).group(1)
        assert cursor in {e.id for e in handle.events()}
        assert "Traceback" not in result.stderr
        handle.wait(20)


def test_http_errors_are_one_line(api, env):
    no_key = cli("run", "simple", "-i", "n=1", "--url", api.url, env=env)
    assert no_key.returncode == 2
    assert "Credentials required" in no_key.stderr and "--api-key" in no_key.stderr
    bad = cli("run", "simple", "-i", "n=x", "--url", api.url, "--api-key", API_KEY, env=env)
    assert bad.returncode == 2 and "n: Not a valid integer." in bad.stderr
    unknown = cli("run", "nosuch", "--url", api.url, "--api-key", API_KEY, env=env)
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr
    down = cli("follow", "01X", "--url", "http://127.0.0.1:9", "--api-key", API_KEY, env=env)
    assert down.returncode == 1
    assert re.search(r"cannot reach http://127.0.0.1:9 .*is the web app running", down.stderr)
    for result in (no_key, bad, unknown, down):
        assert "Traceback" not in result.stderr
