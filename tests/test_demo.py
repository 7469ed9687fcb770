"""The demo, run as a newcomer runs it: its own Redis, LLM server, worker, beat and web app."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.mark.long  # processes started, then waited on: beside the rest (scripts/test)
def test_the_demo_runs_the_content_workflow_end_to_end(redis_server):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLOWKIT_") and k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo", "--sections", "2", "--topic", "test pilots"],
        cwd=ROOT, env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=180,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "private redis-server at redis://127.0.0.1:" in out
    assert "local OpenAI-compatible server at http://127.0.0.1:" in out
    assert re.search(r"POST /workflows/content/runs -> 202, run \w{26}", out)
    assert "dropping the WebSocket; resuming after event" in out
    for step in ("0:content.research", "1:content.outline", "2[0]:content.write_section",
                 "2[1]:content.write_section", "3:content.assemble"):
        assert re.search(rf"step.completed\s+{re.escape(step)}", out), step
    assert "run.succeeded" in out and "flowkit demo: run succeeded" in out
    assert "## test pilots: part 1" in out and "2 sections" in out
    assert "flowkit demo: stopping everything it started" in out
    assert out.rstrip().endswith("flowkit demo: stopped everything it started")


def test_the_exports_of_a_closed_demo_api_carry_a_key():
    """A demo run with FLOWKIT_API_OPEN off and keys set printed exports without a key: the
    CLI they set up got 401."""
    from examples.demo import cli_exports

    closed = cli_exports({"FLOWKIT_API_OPEN": "false", "FLOWKIT_API_KEYS": " k-1 , k-2"},
                         "http://127.0.0.1:5000")
    assert "    export FLOWKIT_API_KEY=k-1" in closed
    assert f"    cd {ROOT}" in closed
    opened = cli_exports({"FLOWKIT_API_OPEN": "true", "FLOWKIT_API_KEYS": "k-1"},
                         "http://127.0.0.1:5000")
    assert not any("FLOWKIT_API_KEY=" in line for line in opened)
