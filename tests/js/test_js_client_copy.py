"""The single-file client the API serves is the build of clients/js/src, not a stale copy."""

import subprocess
import sys

from tests.conftest import ROOT


def test_served_client_is_built_from_the_sources():
    check = subprocess.run(
        [sys.executable, "scripts/build-js-client", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
