"""The watch page in headless Chromium: follows a run live, survives a dropped socket."""

from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

import flowkit
from flowkit import history
from flowkit.engine import control
from tests.api.conftest import make_app, serve
from tests.api.helpers import start
from tests.conftest import open_gate, reached_gate, wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if shutil.which(CHROMIUM) is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def shown_ids(page) -> list[str]:
    return page.evaluate("window.flowkitRun.events.map(e => e.id)")


def test_watch_page_follows_a_run_across_a_dropped_socket_and_a_refresh(api, client, browser):
    run = start(client, "streaming", {"before": 3, "after": 3})
    handle = flowkit.get_run(run["id"])
    page = browser.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{api.url}{run['urls']['watch']}?token={run['token']}")
    expect(page.locator("section.step pre.text")).to_have_text("a0a1a2", timeout=30_000)
    assert page.get_attribute("#state", "data-state") == "running"

    reached_gate(handle, "streamer")
    page.evaluate("window.flowkitRun.watch.drop()")  # the network drops
    open_gate(handle, "streamer")  # the run finishes while the page is disconnected
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert page.evaluate("window.flowkitRun.watch.connects") >= 2
    expected = [e.id for e in history(run["id"])]
    assert shown_ids(page) == expected
    assert page.text_content("section.step pre.text") == "a0a1a2b0b1b2"
    assert page.text_content("#run-output").strip().startswith("{")  # the final output shows
    assert page.locator("section.step .progress").count() == 0  # no stale progress line

    page.reload()  # a refresh shows the same run from the page's memory and stays ended
    page.wait_for_selector('#state[data-state="succeeded"]')
    page.wait_for_selector('#connection[data-connection="ended"]')
    assert shown_ids(page) == expected
    page.close()


@pytest.mark.long  # waits out the token's 5 s: beside the rest (scripts/test)
def test_the_watch_page_says_its_link_expired_when_its_token_does(flowkit_env, worker, store,
                                                                   browser):
    """The run token in the page's URL expires (here after 5 s) while the run still waits
    for a person: the stream it opened ends then, and the page says what to do, not a bare
    refusal, and takes away the answer form its token can no longer send."""
    for served in serve(make_app(token_ttl=5)):
        run = start(served.client(), "approval", {"n": 1})
        handle = flowkit.get_run(run["id"])
        wait_until(lambda rid=run["id"]: flowkit.get_run(rid).state == "waiting",
                   message="the run waiting for input")
        page = browser.new_page()
        page.set_default_timeout(30_000)
        try:
            # minted once the run waits, as the app would hand it to the page now
            token = served.app.extensions["flowkit"].auth.issue(run["id"])
            page.goto(f"{served.url}{run['urls']['watch']}?token={token}")
            page.wait_for_selector("#answer-form")
            page.wait_for_selector('#connection[data-connection="closed"]')
            assert page.text_content("#connection") == (
                "link expired: open the run again from the app that gave you this page")
            assert page.locator("#answer-form").count() == 0
            assert flowkit.get_run(run["id"]).state == "waiting"
        finally:
            page.close()
        control.send_input(run["id"], "approval", {"ok": True})
        assert handle.wait(20).output["approved"] is True


def test_watch_page_without_a_token_cannot_read_the_run(api, client, browser):
    run = start(client, "simple", {"n": 1})
    page = browser.new_page()
    page.goto(f"{api.url}{run['urls']['watch']}")
    # what the viewer can do: "send an API key" asked for what this page cannot use
    expect(page.locator("#connection")).to_have_text(
        "this link has no run token (?token=...): open the run again from the app that gave "
        "you this page", timeout=30_000)
    # and no "connecting" under the refusal: nothing was read
    expect(page.locator("#state")).to_have_text("unknown")
    assert shown_ids(page) == []
    page.close()


def test_the_watch_page_sends_its_token_on_to_nothing_as_a_referer(api, client, browser):
    """Its URL holds the run token; each script, style and API request it made carried
    that URL as its Referer (into access logs)."""
    run = start(client, "simple", {"n": 1}, params={"wait": 10})
    page = browser.new_page()
    referers: list[str] = []
    page.on("request", lambda request: referers.append(
        request.all_headers().get("referer", "")))
    response = page.goto(f"{api.url}{run['urls']['watch']}?token={run['token']}")
    assert response.headers["referrer-policy"] == "no-referrer"
    page.wait_for_selector('#state[data-state="succeeded"]')  # read over its stream
    assert len(referers) > 2  # the page, its modules and style, its stream
    assert not [r for r in referers if run["token"] in r]
    page.close()


def test_the_watch_page_runs_only_its_own_scripts_and_still_follows_its_run(api, client,
                                                                            browser):
    """It had no Content-Security-Policy, unlike the dashboard: a script injected into it
    (a run's text rendered as markup, by a later change) would have run with its token."""
    run = start(client, "simple", {"n": 1}, params={"wait": 10})
    page = browser.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    response = page.goto(f"{api.url}{run['urls']['watch']}?token={run['token']}")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    page.wait_for_selector('#state[data-state="succeeded"]')  # its module, style, stream
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = 'window.injected = true';
                             document.body.appendChild(s); }""")
    assert page.evaluate("() => window.injected === undefined")
    assert blocked  # the browser refused the inline script, and said so
    assert not [m for m in blocked if "watch" in m or "_flowkit" in m]  # none of its own
    page.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_watch_page_says_its_events_are_late_while_the_server_cannot_reach_redis(
        flowkit_env, browser, tmp_path, transport):
    """It said "live" through a Redis outage (the socket stayed open and answered pings);
    the relay now says when it cannot read the run's events and when it can again."""
    import httpx

    from flowkit.testing import LocalRedis
    from tests.api.conftest import API_KEY
    from tests.api.helpers import Gunicorn

    with LocalRedis() as redis_server:
        env = {**flowkit_env, "FLOWKIT_REDIS_URL": redis_server.url,
               "FLOWKIT_BROKER_URL": redis_server.url}
        web = Gunicorn(env, tmp_path / "gunicorn.log", FLOWKIT_API_KEYS=API_KEY).start()
        page = browser.new_page()
        page.set_default_timeout(30_000)
        try:
            run = httpx.post(f"{web.url}/workflows/simple/runs", json={"n": 1}, timeout=30,
                             headers={"Authorization": f"Bearer {API_KEY}"}).json()  # no worker
            if transport == "sse":  # as a browser without WebSockets (or behind a proxy) does
                page.add_init_script("delete window.WebSocket")
            page.goto(f"{web.url}{run['urls']['watch']}?token={run['token']}")
            page.wait_for_selector('#connection[data-connection="open"]')
            assert page.evaluate("window.flowkitRun.watch.transport") == transport
            redis_server.stop()
            page.wait_for_selector('#connection[data-connection="degraded"]')
            assert page.text_content("#connection").startswith("delayed: the server cannot")
            redis_server.start()
            page.wait_for_selector('#connection[data-connection="open"]')
            assert page.text_content("#connection") == "live"
            assert page.evaluate("window.flowkitRun.watch.connects") == 1  # the same socket
        finally:
            page.close()
            web.stop()


@pytest.mark.long  # waits out the Retry-After: beside the rest (scripts/test)
def test_a_watch_page_past_its_runs_stream_limit_says_why_and_comes_in_when_one_closes(
        flowkit_env, worker, store, browser):
    """The 429 was taken for a network drop: the page said "reconnecting", nothing more,
    and asked again at once, however long the server said to wait."""
    for served in serve(make_app(streams_per_caller=1)):
        with served.client() as keyed:
            run = start(keyed, "approval", {"n": 1})
        watch = f"{served.url}{run['urls']['watch']}?token={run['token']}"
        first, second = browser.new_page(), browser.new_page()
        try:
            first.goto(watch)
            first.wait_for_selector('#connection[data-connection="open"]')
            second.goto(watch)
            expect(second.locator("#connection")).to_have_text(re.compile("^reconnecting: "),
                                                      timeout=30_000)
            assert "already hold 1 streams open on this server" in second.text_content(
                "#connection")
            first.close()  # its stream ends: the other comes in after the Retry-After
            second.wait_for_selector('#connection[data-connection="open"]', timeout=30_000)
            assert second.text_content("#connection") == "live"
        finally:
            second.close()
            if not first.is_closed():
                first.close()
        flowkit.cancel(run["id"])
