"""The browser client's tests (clients/js/test, Node's test runner) against a real flowkit:
this test serves the API on a loopback port with the session's real worker and Redis, and
runs ``node --test`` with the server's URL, an API key and the Redis URL (the Node tests
open the test workflows' gates with redis-cli) in its environment, and the URL of a second
server whose run tokens last 1 s (the token refresh tests).

The Node packages the tests use (ws, react, react-test-renderer) come from the committed
package-lock.json through ``npm ci``, run once when node_modules is missing or older.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.api.conftest import API_KEY
from tests.conftest import ROOT

CLIENT = os.path.join(ROOT, "clients", "js")
#: Node's runner prints its summary last; its whole output is shown on a failure.
NODE_TIMEOUT = 180


def _install_node_packages() -> None:
    lock = os.path.join(CLIENT, "package-lock.json")
    installed = os.path.join(CLIENT, "node_modules", ".package-lock.json")
    if os.path.exists(installed) and os.path.getmtime(installed) >= os.path.getmtime(lock):
        return
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"


def _runner_flags() -> list[str]:
    """One test file at a time, each test bounded: flags of Node >= 20.11 (Debian 12's own
    nodejs is 18, whose runner has neither)."""
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout
    major, minor = (int(x) for x in version.strip().lstrip("v").split(".")[:2])
    if (major, minor) >= (20, 11):
        return ["--test-concurrency=1", "--test-timeout=60000"]
    return []


@pytest.mark.long  # Node's own process for half a minute: beside the rest (scripts/test)
def test_the_node_suite_passes_against_a_real_server(served, short_tokens, store, flowkit_env):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(
            "node and npm are needed for the browser client's tests (apt-get install nodejs npm)"
        )
    _install_node_packages()
    env = {
        **os.environ,
        "FLOWKIT_URL": served.url + "/flowkit",
        "FLOWKIT_SHORT_TOKENS_URL": short_tokens.url,
        "FLOWKIT_API_KEY": API_KEY,
        "FLOWKIT_TEST_REDIS_URL": flowkit_env["FLOWKIT_REDIS_URL"],
    }
    try:
        done = subprocess.run(
            ["node", "--test", *_runner_flags(), "test/"],
            cwd=CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as hung:
        pytest.fail(f"node --test did not end in {NODE_TIMEOUT}s:\n{hung.stdout}\n{hung.stderr}")
    assert done.returncode == 0, f"node --test failed:\n{done.stdout}\n{done.stderr}"
    assert "# fail 0" in done.stdout, done.stdout
    assert "# skipped 0" in done.stdout, (
        f"tests skipped: the server's env did not reach them\n{done.stdout}"
    )
