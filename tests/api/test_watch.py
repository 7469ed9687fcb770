"""The watch page in headless Chromium: follows a run live, survives a dropped socket."""

from __future__ import annotations

import shutil

import pytest

import flowkit
from flowkit import history
from tests.api.helpers import start
from tests.conftest import open_gate, reached_gate

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
    return page.eval_on_selector_all("#events li", "items => items.map(li => li.dataset.id)")


def test_watch_page_follows_a_run_across_a_dropped_socket_and_a_refresh(api, client, browser):
    run = start(client, "streaming", {"before": 3, "after": 3})
    handle = flowkit.get_run(run["id"])
    page = browser.new_page()
    page.goto(f"{api.url}{run['urls']['watch']}?token={run['token']}")
    page.wait_for_function("document.querySelectorAll('#text span').length === 3")
    assert page.text_content("#state") == "running"

    reached_gate(handle, "streamer")
    page.evaluate("window.flowkitWatch.socket.close()")  # the network drops
    open_gate(handle, "streamer")  # the run finishes while the page is disconnected
    page.wait_for_function("document.querySelector('#state').dataset.state === 'succeeded'")
    assert page.evaluate("window.flowkitWatch.connects") >= 2
    expected = [e.id for e in history(run["id"])]
    assert shown_ids(page) == expected
    assert page.text_content("#text") == "a0a1a2b0b1b2"

    page.reload()  # a refresh shows the same run from the page's memory and stays ended
    page.wait_for_function("document.querySelector('#state').dataset.state === 'succeeded'")
    assert shown_ids(page) == expected
    page.close()


def test_watch_page_without_a_token_cannot_read_the_run(api, client, browser):
    run = start(client, "simple", {"n": 1})
    page = browser.new_page()
    page.goto(f"{api.url}{run['urls']['watch']}")
    page.wait_for_function("document.querySelector('#connection').textContent === 'reconnecting'")
    assert shown_ids(page) == []
    page.close()
