"""The API served on a loopback port for the browser client's tests (the session's worker)."""

from __future__ import annotations

import pytest

from tests.api.conftest import make_app, serve


@pytest.fixture(scope="module")
def served(flowkit_env, worker):
    yield from serve(make_app(url_prefix="/flowkit"))
