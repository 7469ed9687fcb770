"""The API served on a loopback port for the browser client's tests (the session's worker)."""

from __future__ import annotations

import pytest

import flowkit
from tests.api.conftest import make_app, serve


@pytest.fixture(scope="module")
def served(flowkit_env, worker):
    yield from serve(make_app(url_prefix="/flowkit"))


@pytest.fixture(scope="module")
def short_tokens(flowkit_env, worker):
    """The API again, its run tokens lasting 1 s, beside the host app's own route that mints
    them (as an app hands a page a fresh token for a run it let the page see)."""
    app = make_app(url_prefix="/flowkit", token_ttl=1)

    @app.get("/app/runs/<run_id>/token")
    def mint(run_id: str) -> str:
        return flowkit.FlowKit.run_token(run_id)

    yield from serve(app)
