"""The dashboard in headless Chromium against the real server, worker and Redis: the runs
list, a run's page (per-step outputs, final output, error, actions, refresh mid-run), a
1,000-item fan-out, the workers page, and the watch page's run-token mode."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from flask import Flask
from marshmallow import fields, validate
from playwright.sync_api import expect

import flowkit
from flowkit import component, fan_out, history
from flowkit.engine import control
from tests.api import test_watch
from tests.api.conftest import API_KEY, serve
from tests.api.helpers import start
from tests.conftest import open_gate, reached_gate, wait_until
from tests.workflows import LONELY

#: One Chromium for the module, launched as the watch page's tests do.
browser = test_watch.browser
WAIT = 30_000  # ms: generous, the machine is shared
expect.set_options(timeout=WAIT)
NUMBER = re.compile(r"^[0-9]+$")


@component(name="ui.words")
def words(data: dict) -> list:
    return data["words"]


@component(name="ui.speak")
def speak(word: str) -> str:
    """Streams its word in pieces, as parallel LLM calls do: the chunks interleave."""
    for i in range(4):
        flowkit.emit(f"{word}{i} ")
    return word.upper()


#: A fan-out whose items stream at the same time: the page keeps one pane per item.
voices = flowkit.Workflow("ui.voices", [words, fan_out(speak)])

#: The fake OpenAI server the "ui.llm" workflow calls (set by the module's fixture).
LLM: dict[str, str] = {}


@component(name="ui.ask")
def ask(data: dict) -> dict:
    from flowkit.llm import OpenAI

    llm = OpenAI(api_key="sk-dashboard-test-key", base_url=LLM["url"], name="fake")
    reply = llm.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": data["prompt"]}]
    )
    return {"answer": reply.choices[0].message.content}


llm_run = flowkit.Workflow("ui.llm", [ask])


@component(name="ui.contact")
def contact(data: dict) -> dict:
    """Its wait checks an email, which the JSON Schema the API holds answers to cannot (a
    format): a wrong one passes the API, and the step refuses it and asks again. Its size
    (an enum) and gift (a boolean) are optional."""
    return flowkit.wait_for_input("contact", {
        "email": fields.Email(required=True),
        "size": fields.String(validate=validate.OneOf(["S", "M", "L"])),
        "gift": fields.Boolean()})


contacting = flowkit.Workflow("ui.contacting", [contact])


@component(name="ui.free")
def free(data: dict) -> dict:
    return {"said": flowkit.wait_for_input("anything")}


asking_freely = flowkit.Workflow("ui.asking_freely", [free])

#: A name wider than a phone: the workflow filter's select took its width, wider than the page.
long_named = flowkit.Workflow("ui." + "a_workflow_whose_name_is_wider_than_a_phone_" * 2, [free])


@pytest.fixture(scope="module")
def fake_llm():
    from flowkit.testing import FakeLLMServer

    server = FakeLLMServer().start()
    LLM["url"] = server.base_url
    yield server
    server.stop()


@pytest.fixture
def page(browser, api):
    """A page of a fresh context already signed in with the API key (sessionStorage)."""
    context = browser.new_context()
    context.add_init_script(f"sessionStorage.setItem('flowkit.ui.key', {json.dumps(API_KEY)})")
    page = context.new_page()
    page.set_default_timeout(WAIT)
    yield page
    context.close()


def finished(client: httpx.Client, run_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/runs/{run_id}").json()
        if run["state"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return run
        time.sleep(0.1)  # the run record has no push channel for the test


def row(page, run_id: str):
    return page.locator(f'#runs tr[data-run="{run_id}"]')


def test_sign_in_then_the_list_shows_new_runs_and_their_states_live(api, client, browser):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(f"{api.url}/ui")
    page.fill("#key", "wrong-key")
    page.click("button[type=submit]")
    page.wait_for_selector("text=That key was refused.")
    page.fill("#key", API_KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#runs")

    run = start(client, "chain3", {"n": 1})  # waits at its gate: running
    row(page, run["id"]).wait_for()
    page.wait_for_selector(f'#runs tr[data-run="{run["id"]}"][data-state="running"]')
    open_gate(flowkit.get_run(run["id"]), "gated")
    page.wait_for_selector(f'#runs tr[data-run="{run["id"]}"][data-state="succeeded"]')
    context.close()


def test_a_credential_that_cannot_read_the_dashboard_asks_to_sign_in_again(
        api, client, browser):
    """A run token pasted as the key got a 403: the tab said "The API answered: ..." at
    every reload, with no sign-in form and no sign-out, until it was closed."""
    token = start(client, "simple", {"n": 1})["token"]
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(f"{api.url}/ui")
    page.fill("#key", token)
    page.click("button[type=submit]")
    expect(page.locator("main")).to_contain_text("That credential cannot read the dashboard")
    page.reload()  # the refused credential is not kept
    page.fill("#key", API_KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("#runs")
    context.close()


def test_a_retried_run_s_row_shows_the_steps_of_its_new_end(api, client, page):
    """Its row kept the failed end's "1/2" steps beside "succeeded" until a reload."""
    run = start(client, "exhausted", {"n": 1})  # both attempts fail; a third call succeeds
    assert finished(client, run["id"])["state"] == "failed"
    page.goto(f"{api.url}/ui")
    expect(row(page, run["id"]).locator("td.steps")).to_have_text("1/2")
    # why it failed, in its row (each had to be opened to see it)
    expect(row(page, run["id"]).locator("td.detail")).to_have_text(
        "1:t.flaky: Flaky: flaky failure 2")
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202
    assert finished(client, run["id"])["state"] == "succeeded"
    page.wait_for_selector(f'#runs tr[data-run="{run["id"]}"][data-state="succeeded"]')
    expect(row(page, run["id"]).locator("td.steps")).to_have_text("2/2")


def test_a_page_opened_while_the_api_answers_503_shows_its_view_once_it_answers(
        api, client, page):
    """The dashboard stayed on "flowkit's Redis is unavailable; retry shortly." for good
    (the watch page recovered by itself). The first probes answer 503, as during an
    outage; then the API answers."""
    run = start(client, "simple", {"n": 1})
    finished(client, run["id"])
    refused = []

    def outage(route):
        if len(refused) < 2:
            refused.append(route.request.url)
            route.fulfill(status=503, content_type="application/json", headers={
                "Retry-After": "2"}, body=json.dumps({"error": {
                    "code": "store_unavailable", "fields": {},
                    "message": "flowkit's Redis is unavailable; retry shortly."}}))
        else:
            route.continue_()

    page.route("**/runs?limit=1", outage)
    page.goto(f"{api.url}/ui")
    page.wait_for_selector("text=Trying again")
    row(page, run["id"]).wait_for()  # the list, once the API answered
    assert len(refused) == 2


def test_the_list_greys_its_rows_and_says_so_while_the_api_does_not_answer(api, client, page):
    """During an outage the list kept its last rows with no notice beyond a muted line."""
    run = start(client, "simple", {"n": 1})
    finished(client, run["id"])
    page.goto(f"{api.url}/ui")
    row(page, run["id"]).wait_for()
    expect(page.locator("table.runs")).not_to_have_class(re.compile("stale"))
    page.route("**/runs?limit=50*", lambda route: route.fulfill(
        status=503, content_type="application/json", body=json.dumps({"error": {
            "code": "store_unavailable", "fields": {},
            "message": "flowkit's Redis is unavailable; retry shortly."}})))
    expect(page.locator("table.runs")).to_have_class(re.compile("stale"))
    expect(page.locator("#runs-status")).to_have_text(re.compile(
        r"^Could not load runs: flowkit's Redis is unavailable; retry shortly\. \(showing those "
        r"of .+; trying again\)$"))
    assert row(page, run["id"]).count() == 1  # kept, greyed
    page.unroute("**/runs?limit=50*")
    expect(page.locator("table.runs")).not_to_have_class(re.compile("stale"))
    expect(page.locator("#runs-status")).to_have_text(re.compile(r"runs? · updated"))


def test_on_a_phone_the_runs_table_scrolls_in_its_box_not_the_page(api, client, browser):
    start(client, "simple", {"n": 1})
    context = browser.new_context(viewport={"width": 360, "height": 740})
    context.add_init_script(f"sessionStorage.setItem('flowkit.ui.key', {json.dumps(API_KEY)})")
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(f"{api.url}/ui")
    page.wait_for_selector("#runs tr[data-run]")
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth, "
                           "document.querySelector('.scroll').scrollWidth]")
    assert widths[0] <= widths[1] < widths[2], widths  # the table is wider, the page is not
    context.close()


def test_the_pages_declare_their_icon(api, client):
    """A browser asks for /favicon.ico when a page names no icon: a 404 logged on every
    page (headless Chromium asks for none, so the pages' own declaration is checked)."""
    run = start(client, "simple", {"n": 1})
    for path in ("/ui", "/ui/runs/" + run["id"], f"{run['urls']['watch']}?token={run['token']}"):
        page = client.get(path)
        assert page.status_code == 200 and '<link rel="icon" href="data:,">' in page.text, path


def test_an_unknown_run_says_so(api, page):
    """It showed an empty run headed "refused (404)", which read as a permissions problem."""
    page.goto(f"{api.url}/ui/runs/01M93X05HT2RHYGESAXCMYWMBZ")
    expect(page.locator("#connection")).to_contain_text("No run '01M93X05HT2RHYGESAXCMYWMBZ' "
                                                        "(unknown, or expired")


def test_filters_by_state_and_workflow_and_search_by_id(api, client, page):
    good = start(client, "simple", {"n": 1})
    bad = start(client, "exhausted", {"n": 1})
    finished(client, good["id"]), finished(client, bad["id"])
    page.goto(f"{api.url}/ui")
    row(page, good["id"]).wait_for()
    page.select_option("#f-state", "failed")
    expect(page.locator('#runs tr[data-state]:not([data-state="failed"])')).to_have_count(0)
    row(page, bad["id"]).wait_for()
    assert row(page, good["id"]).count() == 0
    assert "state=failed" in page.url  # a refresh keeps the filter

    page.select_option("#f-state", "")
    page.select_option("#f-workflow", "simple")
    # awaited: the list shown for the cleared state filter (both runs) may still be up
    expect(row(page, bad["id"])).to_have_count(0)
    row(page, good["id"]).wait_for()
    assert "workflow=simple" in page.url

    page.select_option("#f-workflow", "")
    page.fill("#f-q", bad["id"])
    page.press("#f-q", "Enter")
    expect(page.locator("#runs tr[data-run]")).to_have_count(1)
    row(page, bad["id"]).wait_for()
    # a run found by its id is held to the filters shown beside the search (it was not)
    page.select_option("#f-state", "succeeded")
    expect(page.locator("#runs tr[data-run]")).to_have_count(0)
    page.select_option("#f-state", "failed")
    row(page, bad["id"]).wait_for()


def test_outputs_are_per_step_and_the_final_output_shows(api, client, page):
    run = start(client, "ui.voices", {"words": ["red", "green", "blue"]})
    finished(client, run["id"])
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="succeeded"]')
    panes = page.locator("section.step[data-step*='speak'] pre.text")
    expect(panes).to_have_count(3)
    texts = sorted(panes.all_text_contents())
    assert texts == [
        "blue0 blue1 blue2 blue3 ",
        "green0 green1 green2 green3 ",
        "red0 red1 red2 red3 ",
    ]
    assert json.loads(page.text_content("#run-output")) == ["RED", "GREEN", "BLUE"]
    # the timeline draws from the trace, fetched after the state shows: waited for
    expect(page.locator("#timeline svg rect.bar.completed").nth(3)).to_be_attached(
        timeout=30_000)  # not a JS predicate: the page's CSP forbids eval
    assert page.locator("#cancel").count() == 0  # nothing to cancel


def test_a_failed_run_shows_its_error_and_retry_runs_it_again(api, client, page):
    run = start(client, "exhausted", {"n": 1})  # both attempts fail; a third call succeeds
    assert finished(client, run["id"])["state"] == "failed"
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="failed"]')
    assert "flaky failure 2" in page.text_content("#run-error")
    # the timeline draws from the trace, fetched after the run's state shows: waited for
    expect(page.locator("#timeline svg rect.bar.retried")).to_have_count(1)  # attempt 1
    expect(page.locator("#timeline svg rect.bar.failed")).to_have_count(1)  # attempt 2
    retries = []
    page.on("request", lambda r: retries.append(r.url) if r.url.endswith("/retry") else None)
    with page.expect_response(lambda r: r.url.endswith("/retry")) as answered:
        page.dblclick("#retry")  # a double click retries once (the second was a 409 in red)
    assert answered.value.status == 202
    # the call worked: until the run's new state redraws the actions, its button stays off
    # (it was enabled again as the answer came, and a click landing then retried twice)
    assert page.locator("#retry:enabled").count() == 0
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert len(retries) == 1, retries
    assert json.loads(page.text_content("#run-output")) == {"n": 2, "calls": 3}
    assert page.locator("#run-error").count() == 0
    assert client.get(f"/runs/{run['id']}").json()["state"] == "succeeded"


def test_the_failed_runs_listed_are_retried_together_and_each_refusal_is_said(
        api, client, page):
    """An incident's failed runs were retried one page at a time (the CLI's `retry --failed`
    aside). The list filtered to failed runs retries those shown, after a confirmation; a run
    the API refuses (retried elsewhere meanwhile: 409) is named with the API's reason."""
    runs = [start(client, "exhausted", {"n": i}) for i in range(3)]
    for run in runs:
        assert finished(client, run["id"])["state"] == "failed"
    refused = runs[0]["id"]
    page.route(f"**/runs/{refused}/retry", lambda route: route.fulfill(
        status=409, content_type="application/json", body=json.dumps({"error": {
            "code": "invalid_state", "fields": {},
            "message": f"Run {refused} is succeeded; only failed runs can be retried."}})))
    page.goto(f"{api.url}/ui?state=failed&workflow=exhausted")
    for run in runs:
        row(page, run["id"]).wait_for()
    button = page.locator("#retry-shown")
    expect(button).to_have_text(re.compile(r"^Retry the \d+ failed runs shown$"))
    asked = []

    def confirm(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", confirm)
    button.click()
    expect(page.locator("#bulk-status")).to_have_text(re.compile(
        rf"^Retried (\d+) of (\d+) failed runs\. Not retried: {refused}: Run {refused} is "
        r"succeeded; only failed runs can be retried\.$"))
    assert re.fullmatch(r"Retry the \d+ failed runs shown\? Each resumes from its failed "
                        r"step\.", asked[0]), asked
    for run in runs[1:]:
        assert finished(client, run["id"])["state"] == "succeeded"
    assert client.get(f"/runs/{refused}").json()["state"] == "failed"  # its retry was refused
    expect(row(page, refused)).to_have_count(1)  # still listed: still failed
    for run in runs[1:]:  # the list follows: retried, they are no longer failed
        expect(row(page, run["id"])).to_have_count(0)


def test_the_retry_button_shows_only_on_failed_runs(api, client, page):
    run = start(client, "simple", {"n": 1})
    assert finished(client, run["id"])["state"] == "succeeded"
    page.goto(f"{api.url}/ui")
    row(page, run["id"]).wait_for()
    expect(page.locator("#retry-shown")).to_be_hidden()
    page.select_option("#f-state", "succeeded")
    row(page, run["id"]).wait_for()
    expect(page.locator("#retry-shown")).to_be_hidden()


def test_a_failed_runs_page_follows_a_retry_made_elsewhere(api, client, page):
    """Its stream ended at the failure: the page stayed "failed" with its Retry button
    after another tab or the API retried the run, and its Retry then said "is succeeded"."""
    run = start(client, "exhausted", {"n": 1})
    assert finished(client, run["id"])["state"] == "failed"
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="failed"]')
    page.wait_for_selector('#connection[data-connection="ended"]')
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202  # from elsewhere
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert json.loads(page.text_content("#run-output")) == {"n": 2, "calls": 3}
    expect(page.locator("#retry")).to_have_count(0)


def test_a_failed_runs_page_follows_a_retry_that_failed_again_before_it_looked(
        api, client, page):
    """The page saw "failed" again, the state it held, and followed nothing more."""
    run = start(client, "misbehaving", {"how": "surrogate-error"})  # fails at once, each time
    assert finished(client, run["id"])["state"] == "failed"
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#connection[data-connection="ended"]')
    failures = page.locator('#events li[data-type="run.failed"]')
    expect(failures).to_have_count(1)
    assert client.post(f"/runs/{run['id']}/retry").status_code == 202
    assert finished(client, run["id"])["state"] == "failed"  # again, at once
    expect(failures).to_have_count(2)


def test_cancel_button_cancels_a_running_run(api, client, page):
    run = start(client, "chain3", {"n": 1})
    handle = flowkit.get_run(run["id"])
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="running"]')
    page.focus("#cancel")
    page.keyboard.press("Enter")  # the actions work from the keyboard
    page.wait_for_selector('#state[data-state="cancelled"]')
    assert client.get(f"/runs/{run['id']}").json()["state"] == "cancelled"
    # no Retry: the API retries failed runs only, and the button always ended in a 409
    expect(page.locator("#retry")).to_have_count(0)
    open_gate(handle, "gated")  # let the step go; the run stays cancelled


def test_a_waiting_run_is_answered_with_the_form_from_its_schema(api, client, page):
    run = start(client, "approval", {"n": 2})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector("#answer-form")
    assert "Publish this?" in page.text_content("#answer-form")
    page.check("#answer-ok")
    page.fill("#answer-note", "ship it")
    page.click("#answer-form button[type=submit]")
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert json.loads(page.text_content("#run-output"))["approved"] is True


def test_eight_run_tabs_signed_in_with_an_api_key_all_follow_their_runs_live(api, client, page):
    """With an API key each run's tab followed over SSE (the key must not go in a socket's
    URL): each held one of the browser's 6 connections to the server, and a 7th tab did not
    even load. Each now follows over a WebSocket with a run token its key makes."""
    runs = [start(client, "approval", {"n": i}) for i in range(8)]
    tabs = [page] + [page.context.new_page() for _ in runs[1:]]
    for tab, run in zip(tabs, runs, strict=True):
        tab.set_default_timeout(WAIT)
        tab.goto(f"{api.url}/ui/runs/{run['id']}")
    for tab in tabs:
        tab.wait_for_selector("#answer-form")
        expect(tab.locator("#connection")).to_have_text("live")
        assert tab.evaluate("window.flowkitRun.watch.transport") == "websocket"
    for run in runs:
        answered = client.post(f"/runs/{run['id']}/input/approval", json={"ok": True})
        assert answered.status_code == 202, answered.text
    for tab in tabs:  # each learns it over its own stream, still open
        tab.wait_for_selector('#state[data-state="succeeded"]')


def test_an_answer_the_step_refuses_is_said_on_the_form_asked_again(api, client, page):
    """The step's validators refused an answer the API took (202), and opened its wait again
    with `refused`: the pages showed an empty form, and when the events reopening it came in
    one burst (a reconnect, a background tab), none: it stayed "Answered." with Send off."""
    run = start(client, "ui.contacting", {})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector("#answer-form")
    page.wait_for_selector('#connection[data-connection="open"]')
    page.fill("#answer-email", "not-an-email")
    page.evaluate("window.flowkitRun.watch.drop()")  # the reopening comes in one burst
    page.click("#answer-form button[type=submit]")
    expect(page.locator("#answer-email-error")).to_contain_text("Not a valid email address.")
    expect(page.locator("#answer-form [role=status]")).to_contain_text("answer again")
    expect(page.locator("#answer-email")).to_have_value("not-an-email")  # to correct
    expect(page.locator("#answer-form button[type=submit]")).to_be_enabled()
    page.fill("#answer-email", "ada@example.com")
    page.click("#answer-form button[type=submit]")
    page.wait_for_selector('#state[data-state="succeeded"]')
    # the optional enum and boolean left alone are not in the answer (the first option and
    # `false` were sent)
    assert json.loads(page.text_content("#run-output")) == {"email": "ada@example.com"}


def test_a_wait_without_a_schema_is_answered_with_any_json(api, client, page):
    """Its form had no field: the only answer it could send was {}."""
    run = start(client, "ui.asking_freely", {})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.fill("#answer-answer", '[1, "two"]')
    page.click("#answer-form button[type=submit]")
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert json.loads(page.text_content("#run-output")) == {"said": [1, "two"]}
    again = start(client, "ui.asking_freely", {})
    page.goto(f"{api.url}/ui/runs/{again['id']}")
    page.fill("#answer-answer", "plain words")  # not JSON: a string
    page.click("#answer-form button[type=submit]")
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert json.loads(page.text_content("#run-output")) == {"said": "plain words"}


def test_an_answer_refused_after_another_closed_its_wait_is_said_on_the_page(
        api, client, page):
    """Two people a second apart: the page's answer lost to another's and got a 409 ("the
    first answer stands"), written into its form, which the wait's end had removed: the run
    went on with the other answer and the page said nothing."""
    run = start(client, "approval", {"n": 2})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector("#answer-form")
    held = []
    # the page's, held (it names its wait's step: ?step=)
    page.route("**/input/approval?*", lambda route: held.append(route))
    page.check("#answer-ok")
    with page.expect_request(lambda r: "/input/approval?" in r.url):
        page.click("#answer-form button[type=submit]")
    expect(page.locator("#answer-form button[type=submit]")).to_be_disabled()  # no second
    other = client.post(f"/runs/{run['id']}/input/approval", json={"ok": False})
    assert other.status_code == 202, other.text  # the other person's answer, first
    page.wait_for_selector('#state[data-state="succeeded"]')
    expect(page.locator("#answer-form")).to_have_count(0)
    [route] = held
    route.continue_()
    said = page.locator("#notices [role=alert]")
    expect(said).to_contain_text("Your answer to “approval” was not taken:")
    expect(said).to_contain_text("the first answer stands")
    assert json.loads(page.text_content("#run-output"))["approved"] is False
    said.locator("button").click()  # dismissed
    expect(said).to_have_count(0)


def test_several_inputs_open_at_once_each_get_a_form_until_answered(api, client, page):
    """Fan-out items each asking a person: the page showed a form for the last one only,
    then none, "running", while two waits stayed open (a reload showed the same)."""
    run = start(client, "waiting_items", {"n": 3})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    forms = page.locator("form.answer")
    expect(forms).to_have_count(3)
    assert sorted(forms.evaluate_all("fs => fs.map(f => f.dataset.wait)")) == [
        "item-0", "item-1", "item-2"]
    for answered, value in enumerate((10, 20, 30)):
        form = page.locator(f'form.answer[data-wait="item-{answered}"]')
        form.locator("input").fill(str(value))
        form.locator("button[type=submit]").click()
        if answered < 2:  # the others stay open, and the run waits for them
            expect(forms).to_have_count(2 - answered)
            expect(page.locator("#state")).to_have_attribute("data-state", "waiting")
            if answered == 0:
                page.reload()  # the stored events fold the same way
                expect(forms).to_have_count(2)
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert json.loads(page.text_content("#run-output")) == {"total": 60}


def test_items_asking_under_one_name_are_each_answered_by_their_own_form(api, client, page):
    """Every item asks "value": the form shown for item 0 answered item 1 (the page answered
    by name, and the server took whichever wait Redis listed first)."""
    run = start(client, "same_named_items", {"n": 2})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    forms = page.locator("form.answer")
    expect(forms).to_have_count(2)
    for prompt, value in (("item 0?", 5), ("item 1?", 7)):
        form = forms.filter(has_text=prompt)
        form.locator("input").fill(str(value))
        form.locator("button[type=submit]").click()
        expect(forms.filter(has_text=prompt)).to_have_count(0)  # its own wait was answered
    page.wait_for_selector('#state[data-state="succeeded"]')
    answered = [(e.data["step"], e.data["name"]) for e in flowkit.get_run(run["id"]).events()
                if e.type == "run.resumed"]
    assert [step for step, _ in answered] == ["1[0]:t.value_each", "1[1]:t.value_each"]


def test_a_run_waiting_for_a_person_ages_on_its_page_between_events(api, client, page):
    """The header's duration stood still while no event came (1.8 s shown at 10.9 s)."""
    run = start(client, "approval", {"n": 1})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="waiting"]')
    shown = page.text_content("#duration")
    # the page redraws each second, with no event
    expect(page.locator("#duration")).not_to_have_text(shown, timeout=5000)
    client.post(f"/runs/{run['id']}/cancel")


def test_a_refresh_mid_run_keeps_the_history_and_catches_up(api, client, page):
    run = start(client, "streaming", {"before": 3, "after": 3})
    handle = flowkit.get_run(run["id"])
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    expect(page.locator("section.step pre.text")).to_have_text("a0a1a2")
    reached_gate(handle, "streamer")
    page.reload()
    # the events come back from the page's storage, not from the server's start
    expect(page.locator("section.step pre.text")).to_have_text("a0a1a2")
    restored = page.evaluate("window.flowkitRun.events.length")
    assert restored > 0
    assert page.evaluate("window.flowkitRun.watch.state.lastEventId") is not None
    # the page's socket, once open (it first makes its run token: a drop then found none)
    page.wait_for_selector('#connection[data-connection="open"]')
    page.evaluate("window.flowkitRun.watch.drop()")  # and the connection drops
    open_gate(handle, "streamer")
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert page.text_content("section.step pre.text") == "a0a1a2b0b1b2"
    shown = page.evaluate("window.flowkitRun.events.map(e => e.id)")
    assert shown == [e.id for e in history(run["id"])]  # gapless, no duplicates
    assert page.evaluate("window.flowkitRun.watch.connects") >= 2


def test_a_run_page_makes_room_for_its_events_in_a_tab_full_of_earlier_runs(api, client, page):
    """Every run page visited kept its events in the tab's sessionStorage, never removed:
    once full (after about five large runs), no later run's were saved, and each refresh
    replayed its whole history from the server."""
    earlier = "flowkit.ui.events.01M90000000000000000000000"
    page.goto(f"{api.url}/ui")
    filled = page.evaluate("""(key) => {  // to the last byte: chunks of 1 MiB, then halves
        let i = 0;
        for (let size = 1 << 20; size >= 1; size >>= 1) {
            const chunk = "x".repeat(size);
            try { for (;;) sessionStorage.setItem(key + "-" + i++, chunk); } catch { i--; }
        }
        return i;
    }""", earlier)
    assert filled > 0
    run = start(client, "streaming", {"before": 3, "after": 0})
    open_gate(flowkit.get_run(run["id"]), "streamer")
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="succeeded"]')
    saved = f"JSON.parse(sessionStorage.getItem('flowkit.ui.events.{run['id']}'))"
    ids = [e.id for e in history(run["id"])]
    wait_until(lambda: [e["id"] for e in page.evaluate(saved) or ()] == ids, WAIT / 1000,
               "the run's events saved")  # within a second of the last (the page's pace)
    assert page.evaluate(f"Object.keys(sessionStorage).filter(k => k.startsWith('{earlier}'))") \
        == []  # the earlier runs' made room


@pytest.mark.long  # it mostly waits: beside the rest (the fast tier neared 15 min)
def test_a_thousand_item_fan_out_renders_one_page_of_items_paged_by_keyboard(api, client,
                                                                           page):
    run = start(client, "fanned", {"n": 1000})
    assert finished(client, run["id"], timeout=240)["state"] == "succeeded"
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="succeeded"]')
    page.wait_for_selector(
        'section.group .badge[data-status="completed"]:has-text("1000 completed")'
    )
    assert page.locator("section.group section.step").count() == 20  # one page of items
    page.focus("section.group button:has-text('Next')")
    page.keyboard.press("Enter")
    page.wait_for_selector("section.group >> text=items 21–40")
    page.keyboard.press("Enter")  # the redraw kept the focus on the button
    page.wait_for_selector("section.group >> text=items 41–60")
    assert page.locator("#timeline svg g.row").count() < 10  # the fan-out is one row


def test_trace_tree_shows_the_llm_call_and_the_run_its_tokens(api, client, page, fake_llm):
    run = start(client, "ui.llm", {"prompt": "Say hello"})
    assert finished(client, run["id"])["state"] == "succeeded"
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="succeeded"]')
    expect(page.locator("#tokens")).to_have_text(NUMBER)
    page.click("#trace-section > summary")
    call = page.locator('#trace li.span[data-kind="llm"]').first
    call.wait_for()
    assert "gpt-4o-mini" in call.text_content()
    assert page.locator('#trace li.span[data-kind="step"]').count() == 1
    page.goto(f"{api.url}/ui?workflow=ui.llm")  # the list row has the tokens too
    expect(row(page, run["id"]).locator("td").nth(7)).to_have_text(NUMBER)


@pytest.mark.long  # it mostly waits: beside the rest (the fast tier neared 15 min)
def test_a_thousand_item_fan_out_followed_live_keeps_every_event_and_answers_at_once(
    api, client, page
):
    run = start(client, "fanned", {"n": 1000})
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector(
        'section.group .badge[data-status="completed"]:has-text("1000 completed")', timeout=240_000
    )
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert page.evaluate("window.flowkitRun.events.length") == len(history(run["id"]))
    # the pager's click redraws in its own task (not through the throttled render the
    # events go through): the page shows the next items before the click returns
    shown = page.evaluate("""() => {
        document.querySelector("section.group button:last-of-type").click();
        return document.querySelector("section.group nav.pager").textContent;
    }""")
    assert "items 21–40" in shown, shown
    assert page.locator("section.group >> text=items 21–40").count() == 1


def test_a_queued_run_says_what_it_waits_for(api, client, page):
    # the store fixture's flush took the session worker's presence with it: until its next
    # beat the page would say "no live worker" (true then), not which queue lacks one
    wait_until(lambda: control.live_workers(), 20, "the session worker's presence")
    run = start(client, "lonely", {"n": 1})  # its queue has no consumer
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    page.wait_for_selector('#state[data-state="queued"]')
    page.wait_for_selector(f"#waiting:has-text('{LONELY}')")
    page.click("#cancel")  # and it can be cancelled before it ever runs
    page.wait_for_selector('#state[data-state="cancelled"]')


def test_the_timeline_marks_retried_and_restarted_attempts(api, page):
    """The timeline module on a stream with a retry and a restart (a worker crash needs a
    worker process to kill; the drawing is what this checks)."""
    page.goto(f"{api.url}/ui/workers")
    page.wait_for_selector("#workers")
    drawn = page.evaluate("""async () => {
        const { drawTimeline } = await import("/_flowkit_watch/ui/timeline.js");
        const e = (id, type, more) => ({ id: `${1000 + id}-0`, ts: 1000 + id, type, ...more });
        const events = [
            e(0, "run.started"), e(1, "step.started", { step: "0:a", attempt: 1 }),
            e(2, "step.retrying", { step: "0:a", attempt: 1, delay: 1, next_attempt: 2 }),
            e(4, "step.completed", { step: "0:a", attempt: 2 }),
            e(5, "step.started", { step: "1:b", attempt: 1 }),
            e(7, "run.restarted", { superseded: [{ step: "1:b", attempt: 1 }] }),
            e(8, "step.started", { step: "1:b", attempt: 2 }),
            e(9, "step.completed", { step: "1:b", attempt: 2 }), e(9.5, "run.succeeded")];
        const host = document.createElement("div");
        drawTimeline(host, events, ["0:a", "1:b"], 1009.5);
        const count = (sel) => host.querySelectorAll(sel).length;
        return { rows: count("g.row"), retried: count("rect.retried"), restarted: count("rect.restarted"),
                 completed: count("rect.completed"), restarts: count("line.restart"),
                 marks: [...host.querySelectorAll("text.mark")].map((t) => t.textContent) };
    }""")
    assert drawn == {
        "rows": 2,
        "retried": 1,
        "restarted": 1,
        "completed": 2,
        "restarts": 1,
        "marks": ["↻2", "↻2"],
    }


def test_workers_page_lists_live_workers_and_flags_a_queue_nobody_consumes(api, page):
    page.goto(f"{api.url}/ui/workers")
    page.wait_for_selector("#workers tr[data-worker]")
    page.wait_for_selector(f'#unconsumed [data-queue="{LONELY}"]')


def test_workers_page_says_which_workers_take_no_step(api, store, page):
    """A draining worker (SIGTERM) and one `flowkit drain` left running were listed with
    their queues like the others: a queue only they serve looked served."""
    announced = {"pool": "threads", "concurrency": 2, "flowkit": flowkit.__version__}
    store.heartbeat([], "leaving@host:1", time.time(),
                    node=("leaving@host", {**announced, "queues": [LONELY], "draining": True}))
    store.heartbeat([], "idle@host:1", time.time(),
                    node=("idle@host", {**announced, "queues": [], "draining": False}))
    page.goto(f"{api.url}/ui/workers")
    expect(page.locator('tr[data-worker="leaving@host"]')).to_contain_text("draining: takes no step")
    expect(page.locator('tr[data-worker="leaving@host"]')).to_have_class("draining")
    expect(page.locator('tr[data-worker="idle@host"]')).to_contain_text("none: drained")
    expect(page.locator(f'#unconsumed [data-queue="{LONELY}"]')).to_have_count(1)


def test_a_step_whose_lease_lapsed_is_said_lost_on_the_workers_page_and_its_run_s(
        api, client, store, page):
    """A killed worker's step was listed as running, and its run's page said "running" and
    nothing else, for as long as no worker came back."""
    # the store fixture's flush took the session worker's presence with it: until its next
    # beat the run would be said to wait "once a worker is up" (a fresh-clone run saw it)
    wait_until(lambda: control.live_workers(), 20, "the session worker's presence")
    run = start(client, "lonely", {"n": 1})  # its queue has no consumer: nothing renews it
    gen = flowkit.get_run(run["id"]).gen
    begun = store.begin_step(run["id"], "0:t.add_one", gen, "t0", "ghost@host:9",
                             time.time() - 3600, "t.add_one")  # began an hour ago, then died
    assert begun.status.name == "RUN"
    page.goto(f"{api.url}/ui/workers")
    lost = page.locator(f'#workers tr[data-run="{run["id"]}"]')
    expect(lost).to_have_attribute("data-lost", "true")
    expect(lost).to_contain_text("lost: lease lapsed")
    # the run's record and page say what it waits for: it looked as if it ran on
    said = client.get(f"/runs/{run['id']}").json()
    assert said["state"] == "running"
    assert re.fullmatch(r"step 0:t\.add_one's worker \(ghost@host:9\) stopped beating: its "
                        r"lease lapsed \d+s ago; the reaper restarts it", said["waiting_for"])
    page.goto(f"{api.url}/ui/runs/{run['id']}")
    expect(page.locator("#waiting")).to_contain_text("stopped beating")
    flowkit.cancel(run["id"])


def test_the_watch_page_in_run_token_mode_sees_that_run_and_nothing_else(api, client, browser):
    mine = start(client, "chatty", {"n": 1})
    other = start(client, "simple", {"n": 2})
    finished(client, mine["id"])
    page = browser.new_page()
    page.set_default_timeout(WAIT)
    page.goto(f"{api.url}{mine['urls']['watch']}?token={mine['token']}")
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert page.text_content("section.step pre.text") == "alphabetagamma"
    assert page.locator("section.step .progress").count() == 0  # no stale "word 3/3" line
    assert page.locator("#cancel, #retry, nav").count() == 0
    # the page's own client, holding the token, is refused anything else
    statuses = page.evaluate(
        """async ([other, token]) => {
        const get = (path) => fetch(path, {headers: {Authorization: `Bearer ${token}`}}).then(r => r.status);
        return [await get(`/runs/${other}`), await get('/runs'), await get('/workers'),
                await get(`/runs/${other}/events`)];
    }""",
        [other["id"], mine["token"]],
    )
    assert statuses == [403, 403, 403, 403]
    page.close()


@contextmanager
def app_with(**config) -> Iterator[str]:
    """A server of an app with these Flask config keys set before flowkit mounts."""
    app = Flask(f"flowkit-ui-{sorted(config)}")
    app.config.update(FLOWKIT_API_SECRET="test-signing-secret", **config)
    flowkit.FlowKit(app, keys=[API_KEY])
    served = serve(app)
    try:
        yield next(served).url
    finally:
        served.close()


def test_the_dashboard_at_the_root_of_the_api_is_refused_saying_why(flowkit_env):
    """``FLOWKIT_API_UI_PATH="/"`` made every link protocol-relative (``//runs/<id>``, another
    host), and its pages the API's own routes."""
    from flowkit.errors import ConfigError

    app = Flask("flowkit-ui-root")
    app.config.update(FLOWKIT_API_SECRET="test-signing-secret", FLOWKIT_API_UI_PATH="/")
    with pytest.raises(ConfigError, match=r"FLOWKIT_API_UI_PATH='/' would put the dashboard's "
                                          r"pages over the API's own routes"):
        flowkit.FlowKit(app, keys=[API_KEY])


def test_the_dashboard_can_be_turned_off_and_moved(flowkit_env, worker):
    with app_with(FLOWKIT_API_UI="off") as url:
        assert httpx.get(f"{url}/ui").status_code == 404
    with app_with(FLOWKIT_API_UI_PATH="/console") as url:
        response = httpx.get(f"{url}/console/runs/abc")  # a deep link gets the same shell
        assert response.status_code == 200
        assert 'name="flowkit-ui" content="/console"' in response.text
        assert httpx.get(f"{url}/runs", timeout=10).status_code == 401  # the API still asks


def test_the_reference_web_app_sends_a_person_to_the_dashboard(flowkit_env, monkeypatch):
    monkeypatch.setenv("FLOWKIT_WORKFLOW_MODULES", "tests.workflows")
    from api.app import create_app

    response = create_app().test_client().get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/ui"


def test_the_watch_page_answers_its_run_with_the_run_token(api, client, browser):
    run = start(client, "approval", {"n": 5})
    page = browser.new_page()
    page.set_default_timeout(WAIT)
    page.goto(f"{api.url}{run['urls']['watch']}?token={run['token']}")
    page.wait_for_selector("#answer-form")
    page.click("#answer-form button[type=submit]")  # "ok" left unchecked: the person says no
    page.wait_for_selector('#state[data-state="succeeded"]')
    assert json.loads(page.text_content("#run-output"))["approved"] is False
    page.close()
