"""Mounting: FlowKit(app) / init_app / create_blueprint, prefixes, and per-app state."""

from __future__ import annotations

import pytest
from flask import Flask, request

import flowkit
from flowkit.api.options import ApiOptions
from flowkit.errors import ConfigError
from tests.api.conftest import serve
from tests.api.helpers import start


def host_app(**config) -> Flask:
    app = Flask("host")
    app.config.update(FLOWKIT_API_SECRET="s", **config)

    @app.get("/")
    def home():
        return "host home"

    return app


def test_init_app_reads_flowkit_config_keys_and_mounts_under_a_prefix(flowkit_env, worker, store):
    app = host_app(FLOWKIT_API_KEYS="k1, k2", FLOWKIT_API_URL_PREFIX="/flowkit/")
    kit = flowkit.FlowKit()
    kit.init_app(app)
    state = app.extensions["flowkit"]
    assert state.options.keys == ("k1", "k2") and state.url_prefix == "/flowkit"
    for served in serve(app):
        with served.client(key="k2") as c:
            run = start(c, "simple", {"n": 1}, prefix="/flowkit")
            assert run["urls"]["self"] == f"/flowkit/runs/{run['id']}"
            assert c.get(run["urls"]["self"]).status_code == 200
            assert c.get("/flowkit/nope").json()["error"]["code"] == "not_found"
            # the host's own pages and 404s stay the host's
            assert c.get("/").text == "host home"
            outside = c.get("/elsewhere")
            assert outside.status_code == 404 and "error" not in outside.text[:20]
            assert "/flowkit/runs" in c.get("/flowkit/openapi.json").json()["paths"]


def test_create_blueprint_for_apps_that_mount_it_themselves(flowkit_env, worker, store):
    app = host_app()
    app.register_blueprint(flowkit.create_blueprint(keys=["k"]), url_prefix="/api/v1")
    for served in serve(app):
        with served.client(key="k") as c:
            assert c.get("/api/v1/workflows").status_code == 200
            assert c.get("/api/v1/workflows").json()["workflows"]


def test_two_apps_in_one_process_share_no_state(flowkit_env, worker, store):
    first, second = host_app(), host_app()
    flowkit.FlowKit(first, keys=["first"], workflows=["simple"])
    flowkit.FlowKit(second, keys=["second"])
    a, b = first.extensions["flowkit"], second.extensions["flowkit"]
    assert a is not b and a.hub is not b.hub and a.auth is not b.auth
    for one in serve(first):
        for two in serve(second):
            assert one.client(key="second").get("/workflows").status_code == 401
            assert [w["name"] for w in one.client(key="first").get("/workflows").json()["workflows"]] == ["simple"]
            assert two.client(key="second").get("/workflows/chatty").status_code == 200
            assert one.client(key="first").get("/workflows/chatty").status_code == 404


def test_the_workflows_served_come_from_app_config_then_the_environment(monkeypatch):
    """FLOWKIT_API_WORKFLOWS in the environment was ignored: the reference app, configured
    by its environment alone, served every workflow whatever it said."""
    from flowkit import config

    monkeypatch.setenv("FLOWKIT_API_WORKFLOWS", "simple, chatty")
    config.reset()
    try:
        assert ApiOptions.resolve({}).workflows == frozenset({"simple", "chatty"})
        assert ApiOptions.resolve({"FLOWKIT_API_WORKFLOWS": "simple"}).workflows == {"simple"}
        assert ApiOptions.resolve({}, workflows=["fanned"]).workflows == {"fanned"}
        monkeypatch.setenv("FLOWKIT_API_WORKFLOWS", "")
        config.reset()
        assert ApiOptions.resolve({}).workflows is None  # every registered workflow
    finally:
        monkeypatch.undo()
        config.reset()


def test_run_urls_follow_the_script_root_of_each_request(flowkit_env, worker, store):
    """A run's URLs are built once per script root (url_for costs): an app mounted under
    two roots answers each with its own."""
    from werkzeug.exceptions import NotFound
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = host_app(FLOWKIT_API_KEYS="k", FLOWKIT_API_URL_PREFIX="/api")
    flowkit.FlowKit(app)
    app.wsgi_app = DispatcherMiddleware(NotFound(), {"/a": app.wsgi_app, "/b": app.wsgi_app})
    for served in serve(app):
        with served.client(key="k") as c:
            run = start(c, "simple", {"n": 1}, prefix="/a/api")
            assert run["urls"] == {
                "self": f"/a/api/runs/{run['id']}", "output": f"/a/api/runs/{run['id']}/output",
                "events": f"/a/api/runs/{run['id']}/events",
                "stream": f"/a/api/runs/{run['id']}/stream",
                "watch": f"/a/api/runs/{run['id']}/watch"}
            other = c.get(f"/b/api/runs/{run['id']}").json()["urls"]
            assert other == {name: url.replace("/a/", "/b/", 1)
                             for name, url in run["urls"].items()}


def test_mounting_twice_on_one_app_is_refused():
    app = host_app()
    flowkit.FlowKit(app, keys=["k"])
    with pytest.raises(ValueError, match="already mounted"):
        app.register_blueprint(flowkit.create_blueprint(name="again", keys=["k"]))


def test_flowkit_errors_in_the_host_app_s_own_views_are_answered_4xx_not_500(
        flowkit_env, store):
    """``start()`` in a route of the app's own, given a user's bad input, was a 500: flowkit
    registered its error handlers on its blueprint only."""
    app = host_app()

    @app.post("/signup")
    def signup():
        return {"id": flowkit.get_workflow("simple").start(request.get_json()).id}

    @app.get("/mine/<run_id>")
    def mine(run_id):
        return {"state": flowkit.get_run(run_id).state}

    flowkit.FlowKit(app, keys=["k"])
    for served in serve(app):
        with served.client() as c:
            bad = c.post("/signup", json={"n": "many"})
            assert bad.status_code == 400, bad.text
            assert bad.json()["error"]["code"] == "validation_error"
            assert bad.json()["error"]["fields"]["n"], bad.json()
            missing = c.get("/mine/01M95MV5XK63RY93YGFZ3HVZ8S")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("handled", [flowkit.FlowkitError, Exception, 500])
@pytest.mark.parametrize("registered", ["before", "after"])
def test_the_host_app_s_own_error_handling_stays_its_own(flowkit_env, store, handled,
                                                         registered):
    """Its error page, its error reporting: flowkit's handler for the class was picked over
    the app's ``Exception`` (or 500, or ``FlowkitError`` registered after) handler."""
    app = host_app()
    seen = []

    def mine(exc):
        seen.append(type(exc).__name__)
        return {"mine": str(exc)}, 418

    @app.post("/signup")
    def signup():
        return {"id": flowkit.get_workflow("simple").start(request.get_json()).id}

    if registered == "before":
        app.register_error_handler(handled, mine)
    flowkit.FlowKit(app, keys=["k"])
    if registered == "after":
        app.register_error_handler(handled, mine)
    for served in serve(app):
        with served.client() as c:
            answer = c.post("/signup", json={"n": "many"})
            assert answer.status_code == 418 and "mine" in answer.json(), answer.text
    # a 500 page sees the error as Flask hands it on: an InternalServerError
    assert seen == ["InternalServerError" if handled == 500 else "ValidationError"]


@pytest.mark.parametrize("given", [{"ping_interval": 0}, {"events_page": -1},
                                   {"subscriber_buffer": 1.5}, {"token_ttl": "60"}])
def test_numbers_given_as_keywords_or_in_app_config_are_checked_as_the_environment_s(given):
    """``ping_interval=0`` made every SSE stream write pings as fast as its socket took them
    (82,000 a second); the environment's FLOWKIT_API_PING_INTERVAL=0 was refused."""
    [(name, value)] = given.items()
    said = rf"FLOWKIT_API_{name.upper()} \(api_{name}=\) is "
    with pytest.raises(ConfigError, match=said):
        ApiOptions.resolve({}, **given)
    with pytest.raises(ConfigError, match=said):
        ApiOptions.resolve({f"FLOWKIT_API_{name.upper()}": value})
