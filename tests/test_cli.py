"""The ``flowkit`` command line, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests import workflows as wf

pytestmark = pytest.mark.integration


def flowkit_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env={**env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(flowkit_env, store, worker):
    import os

    return {**os.environ, **flowkit_env}


def test_status_and_events_of_a_run(env):
    run = wf.simple.start({"n": 1})
    run.result(20)
    status = flowkit_cli("status", run.id, env=env)
    assert status.returncode == 0
    assert json.loads(status.stdout)["state"] == "succeeded"
    lines = flowkit_cli("events", run.id, env=env).stdout.splitlines()
    assert [json.loads(line)["type"] for line in lines][-1] == "run.succeeded"
    followed = flowkit_cli("events", "-f", run.id, "--after", json.loads(lines[0])["id"], env=env)
    assert len(followed.stdout.splitlines()) == len(lines) - 1


@pytest.mark.parametrize("command", [["status"], ["events"], ["events", "-f"], ["cancel"]])
def test_unknown_run_is_a_clear_message_not_a_traceback(env, command):
    result = flowkit_cli(*command, "01UNKNOWN", env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"flowkit {command[0]}: No run '01UNKNOWN' (unknown, or expired after its retention)."
    )


def test_retry_of_a_run_that_did_not_fail_says_why(env):
    run = wf.simple.start({"n": 1})
    run.result(20)
    result = flowkit_cli("retry", run.id, "-A", "tests.workflows", env=env)
    assert result.returncode == 1
    assert "only failed runs can be retried" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_command_prints_usage():
    result = subprocess.run([sys.executable, "-m", "flowkit.cli"], capture_output=True, text=True)
    assert result.returncode == 2 and "usage: flowkit" in result.stdout


def test_unreachable_redis_says_what_to_do(env):
    from flowkit.testing import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    result = flowkit_cli("status", "01X", env={**env, "FLOWKIT_REDIS_URL": url})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"flowkit status: cannot reach Redis at {url}; start it, or point FLOWKIT_REDIS_URL at your Redis."
    )
