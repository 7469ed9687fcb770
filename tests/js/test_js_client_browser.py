"""The single-file client as the API serves it, in headless Chromium: a page imports
``/flowkit/_flowkit_watch/client/flowkit-client.js`` with no build, follows a run over the
browser's own WebSocket with a relative base URL and its run token, and after a reload
resumes from sessionStorage at its last event id instead of replaying the run."""

from __future__ import annotations

import pathlib

import httpx
import pytest

import flowkit
from tests.api.conftest import API_KEY, make_app, serve
from tests.api.test_watch import browser  # noqa: F401 - the Chromium fixture
from tests.conftest import ROOT, open_gate, reached_gate

CLIENT_URL = "/flowkit/_flowkit_watch/client/flowkit-client.js"

#: What a page does: import the served client, watch the run, keep what it saw on window.
FOLLOW = """async ([runId, token]) => {
  const { FlowkitClient } = await import("CLIENT_URL");
  const client = new FlowkitClient({ baseUrl: "/flowkit", token });
  window.seen = [];
  window.watch = client.watch(runId, { storage: sessionStorage });
  window.restored = JSON.parse(JSON.stringify(window.watch.state));
  window.watch.onEvent((e) => window.seen.push(e.id));
}""".replace("CLIENT_URL", CLIENT_URL)

TEXT = "window.watch.state.order.map((k) => window.watch.state.steps[k].text).join('')"


def test_the_served_client_is_an_es_module(served):
    response = httpx.get(served.url + CLIENT_URL)
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert "export class FlowkitClient" in response.text


def test_a_page_follows_a_run_over_its_websocket_and_resumes_after_a_reload(served, store, browser):  # noqa: F811
    with httpx.Client(
        base_url=served.url + "/flowkit", timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as api:
        run = api.post("/workflows/streaming/runs", json={"before": 2, "after": 2}).json()
    handle = flowkit.get_run(run["id"])
    page = browser.new_page()
    page.goto(served.url + "/flowkit/healthz")  # any page of the API's origin
    page.evaluate(FOLLOW, [run["id"], run["token"]])
    reached_gate(handle, "streamer")
    page.wait_for_function(f"{TEXT} === 'a0a1'")
    assert page.evaluate("window.watch.transport") == "websocket"
    assert page.evaluate("window.watch.state.connection") == "open"
    open_gate(handle, "streamer")
    page.wait_for_function("window.watch.state.connection === 'closed'")
    assert page.evaluate("window.watch.state.state") == "succeeded"
    assert page.evaluate(TEXT) == "a0a1b0b1"
    history = [e.id for e in flowkit.history(run["id"])]
    assert page.evaluate("window.seen") == history

    page.reload()  # the same tab: sessionStorage holds the run
    page.evaluate(FOLLOW, [run["id"], run["token"]])
    restored = page.evaluate("window.restored")
    assert restored["lastEventId"] == history[-1]
    assert restored["state"] == "succeeded"
    page.wait_for_function("window.watch.state.connection === 'closed'")
    assert page.evaluate("window.seen") == []  # nothing after the last id: nothing replayed
    assert page.evaluate(TEXT) == "a0a1b0b1"
    page.close()


def _signed_in(request) -> bool:
    """The host app's session: a cookie its sign-in page set."""
    return request.cookies.get("session") == "signed-in"


@pytest.fixture(scope="module")
def cookie_served(flowkit_env, worker):
    yield from serve(make_app(url_prefix="/flowkit", authorize=_signed_in))


def test_a_signed_in_page_starts_and_follows_a_run_with_its_cookie_and_no_token(
    cookie_served,
    store,
    browser,  # noqa: F811
):
    context = browser.new_context()
    context.add_cookies([{"name": "session", "value": "signed-in", "url": cookie_served.url}])
    page = context.new_page()
    page.goto(cookie_served.url + "/flowkit/healthz")
    state = page.evaluate(
        """async () => {
      const { FlowkitClient } = await import("CLIENT_URL");
      const client = new FlowkitClient({ baseUrl: "/flowkit" });
      const run = await client.start("simple", { n: 1 });
      const watch = client.watch(run.id);
      await new Promise((resolve) => watch.subscribe((s) => s.connection === "closed" && resolve()));
      return { state: watch.state.state, output: watch.state.output, transport: watch.transport };
    }""".replace("CLIENT_URL", CLIENT_URL)
    )
    assert state == {"state": "succeeded", "output": {"n": 4}, "transport": "websocket"}
    context.close()


def test_without_the_cookie_the_page_is_refused(cookie_served, store, browser):  # noqa: F811
    page = browser.new_page()
    page.goto(cookie_served.url + "/flowkit/healthz")
    refused = page.evaluate(
        """async () => {
      const { FlowkitClient } = await import("CLIENT_URL");
      try { await new FlowkitClient({ baseUrl: "/flowkit" }).start("simple", { n: 1 }); }
      catch (error) { return [error.name, error.status]; }
    }""".replace("CLIENT_URL", CLIENT_URL)
    )
    assert refused == ["FlowkitError", 401]
    page.close()


def readme_example() -> str:
    """The page of the README's "Browser client" section, as written there."""
    readme = (pathlib.Path(ROOT) / "README.md").read_text()
    section = readme.split("## Browser client", 1)[1]
    return section.split("```html\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_page_shows_a_run(served, store, browser):  # noqa: F811
    with httpx.Client(
        base_url=served.url + "/flowkit", timeout=30, headers={"Authorization": f"Bearer {API_KEY}"}
    ) as api:
        run = api.post("/workflows/chatty/runs", json={"n": 1}).json()
    page = browser.new_page()
    page.goto(f"{served.url}/flowkit/healthz?run={run['id']}&token={run['token']}")
    page.set_content(readme_example())  # the page's origin and query stay: as if served there
    page.wait_for_function("document.querySelector('#out').textContent.startsWith('succeeded')")
    shown = page.text_content("#out")
    assert "alphabetagamma" in shown
    assert '"words":3' in shown
    page.close()
