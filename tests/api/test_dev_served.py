"""``flowkit dev``'s banner names the workflows the web app serves, as its API lists them:
it named the worker's (-A), so a ``--web`` app that did not import them looked fine and
answered 404 to every start."""

from __future__ import annotations

import pytest

import flowkit
from flowkit.cli import dev
from tests.api.conftest import API_KEY, make_app, serve

pytestmark = pytest.mark.integration


def test_the_banner_names_what_the_web_app_serves_and_notes_what_it_does_not(
        flowkit_env, worker, monkeypatch):
    monkeypatch.setenv("FLOWKIT_API_KEYS", API_KEY)
    for served in serve(make_app(workflows=["simple"])):
        assert dev._web_workflows(served.url) == ["simple"]
        [note] = dev._unserved(["simple"])
        unserved = note.removeprefix("the web app does not serve ").split(": ")[0].split(", ")
        assert "capped" in unserved and "simple" not in unserved
        monkeypatch.setenv("FLOWKIT_API_KEYS", "not-its-key")
        assert dev._web_workflows(served.url) is None  # it will not say: no note, no guess
    assert dev._unserved(sorted(flowkit.workflows())) == []
