"""``flowkit run --url`` and ``flowkit follow --url``: the CLI against a real HTTP server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading

import pytest

import flowkit
from tests.conftest import open_gate, reached_gate, wait_until

from .conftest import API_KEY, make_app, serve
from .helpers import start

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flowkit.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def env(flowkit_env, store):
    # No FLOWKIT_REDIS_URL: the CLI must go through HTTP only.
    return {k: v for k, v in {**os.environ, **flowkit_env}.items()
            if k not in ("FLOWKIT_REDIS_URL", "FLOWKIT_BROKER_URL")}


def test_run_over_http_follows_the_sse_stream(api, env):
    result = cli("run", "chatty", "-i", "n=3", "--url", api.url, "--api-key", API_KEY, env=env)
    assert result.returncode == 0, result.stderr
    assert "step 0:t.talker 67% word 2/3" in result.stdout
    assert "0:t.talker > alphabetagamma" in result.stdout
    assert json.loads(result.stdout[result.stdout.index("{"):]) == {"n": 3, "words": 3}


def test_a_run_token_follows_its_own_run(api, env, client):
    created = client.post("/workflows/simple/runs", json={"n": 1}).json()
    result = cli("follow", created["id"], "--url", api.url, "--token", created["token"], "--json",
                 env={**env, "FLOWKIT_URL": ""})
    assert result.returncode == 0, result.stderr
    types = [json.loads(line)["type"] for line in result.stdout.splitlines()]
    assert types[0] == "run.queued" and types[-1] == "run.succeeded"
    assert types.count("step.completed") == 2


def test_following_from_past_a_run_s_events_is_a_usage_error_before_any_output(
        api, env, client):
    """Over HTTP it printed "following run ..." first, then "No such event", exit 1."""
    created = client.post("/workflows/simple/runs", json={"n": 1},
                          headers={"Prefer": "wait=20"}).json()
    last = client.get(f"/runs/{created['id']}/events").json()["events"][-1]["id"]
    past = f"{int(last.split('-')[0]) + 3_600_000}-0"  # an hour on: no stream gave that id
    result = cli("follow", created["id"], "--after", past, "--url", api.url,
                 "--api-key", API_KEY, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"flowkit follow: {past} is past the run's events (its last event is {last}): "
        "resume from an id its stream gave you, or 0 for the whole history.")


@pytest.mark.long  # mostly waiting for a token's expiry: beside the rest
def test_a_run_token_expiring_mid_run_ends_the_follow_with_what_to_do(env, worker):
    """The server ends a token's stream when the token expires: the CLI says so in one line
    (exit 2) with the event id to go on from, instead of taking the notice for an event.

    The token lives 5 s: the CLI's interpreter start takes over 1 s on a loaded 2-core
    machine, and the token must still be good when the CLI first connects."""
    for served in serve(make_app(token_ttl=5)):
        created = start(served.client(), "chain3", {"n": 1})
        handle = flowkit.get_run(created["id"])
        try:
            result = cli("follow", created["id"], "--url", served.url, "--token",
                         created["token"], env={**env, "FLOWKIT_URL": ""})
        finally:
            open_gate(handle, "gated")
        assert result.returncode == 2, result.stderr
        assert "The run token expired while following run" in result.stderr
        cursor = re.search(r"`--after (\S+)` goes on from here", result.stderr).group(1)
        assert cursor in {e.id for e in handle.events()}
        assert "Traceback" not in result.stderr
        handle.wait(20)


class CuttingProxy:
    """A TCP proxy in front of ``port``, as a load balancer in a deploy: it cuts the
    connection that carries the first event, and holds every connection made after that
    until ``let_through`` is set."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cut = threading.Event()
        self.let_through = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._relay, args=(downstream,), daemon=True).start()

    def _relay(self, downstream: socket.socket) -> None:
        if self.cut.is_set():
            self.let_through.wait(60)
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        threading.Thread(target=self._pump, args=(downstream, upstream, False),
                         daemon=True).start()
        self._pump(upstream, downstream, True)

    def _pump(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if from_server and not self.cut.is_set() and re.search(rb"(^|\n)data: ", data):
                    self.cut.set()
                    break
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


class RefusingProxy(CuttingProxy):
    """A :class:`CuttingProxy` whose first ``refusals`` connections after the cut are
    answered ``503`` as flowkit answers while its Redis is away (or its process stops)."""

    def __init__(self, port: int, refusals: int) -> None:
        super().__init__(port)
        self.refusals = refusals
        self.let_through.set()

    def _relay(self, downstream: socket.socket) -> None:
        if self.cut.is_set() and self.refusals > 0:
            self.refusals -= 1
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in downstream.recv(65536):
                    pass
                body = json.dumps({"error": {"code": "store_unavailable", "fields": {},
                                             "message": "flowkit's Redis is unavailable; "
                                                        "retry shortly."}}).encode()
                downstream.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                   b"Content-Type: application/json\r\nConnection: close\r\n"
                                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                                   + body)
            downstream.close()
            return
        super()._relay(downstream)


@pytest.mark.long  # mostly waiting (5-9 s): beside the rest (scripts/test)
def test_a_follow_waits_out_503s_and_reconnects_saying_so_once(api, env, worker):
    """A reconnect answered 503 (Redis away, the process restarting) ended the follow, exit
    1, while the run went on; and it said nothing while it retried."""
    created = start(api.client(), "chain3", {"n": 1})
    handle = flowkit.get_run(created["id"])
    reached_gate(handle, "gated")
    proxy = RefusingProxy(int(api.url.rsplit(":", 1)[1]), refusals=2)
    follow = subprocess.Popen(
        [sys.executable, "-m", "flowkit.cli", "follow", created["id"], "--url", proxy.url,
         "--api-key", API_KEY, "--json"], env={**env, "FLOWKIT_URL": ""},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proxy.cut.wait(60), "the CLI's stream never carried an event"
        wait_until(lambda: proxy.refusals == 0, 30, "the two refused reconnects")
        open_gate(handle, "gated")
        stdout, stderr = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
        proxy.close()
    assert follow.returncode == 0, stderr
    # once for the outage (the cut, then two 503s), not per try
    assert stderr.count("reconnecting from event") == 1 and "Traceback" not in stderr, stderr
    ids = [json.loads(line)["id"] for line in stdout.splitlines()]
    assert ids == [e.id for e in handle.events()]  # every event, once, in order


@pytest.mark.long  # mostly waiting for a token's expiry: beside the rest
def test_a_follow_that_reconnects_after_its_token_expired_says_what_to_do(env, worker):
    """The stream drops (a proxy cuts it), and by the time the CLI reconnects its run token
    has expired: the 401 is that expiry, told as such with the event id to go on from, not
    "pass --api-key" as for a token that never worked."""
    for served in serve(make_app(token_ttl=5)):
        created = start(served.client(), "chain3", {"n": 1})
        handle = flowkit.get_run(created["id"])
        reached_gate(handle, "gated")
        proxy = CuttingProxy(int(served.url.rsplit(":", 1)[1]))
        follow = subprocess.Popen(
            [sys.executable, "-m", "flowkit.cli", "follow", created["id"], "--url", proxy.url,
             "--token", created["token"]], env={**env, "FLOWKIT_URL": ""},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proxy.cut.wait(60), "the CLI's stream never carried an event"
            with served.client(key=created["token"]) as as_the_token:
                path = f"/runs/{created['id']}"
                wait_until(lambda c=as_the_token, p=path: c.get(p).status_code == 401, 15,
                           "the token to expire")
            proxy.let_through.set()
            _, stderr = follow.communicate(timeout=60)
        finally:
            if follow.poll() is None:
                follow.kill()
            proxy.close()
            open_gate(handle, "gated")
        assert proxy.connections >= 2  # it did reconnect
        assert follow.returncode == 2, stderr
        assert "The run token expired while following run" in stderr
        cursor = re.search(r"`--after (\S+)` goes on from here", stderr).group(1)
        assert cursor in {e.id for e in handle.events()}
        assert "Traceback" not in stderr
        handle.wait(20)


def test_http_errors_are_one_line(api, env):
    no_key = cli("run", "simple", "-i", "n=1", "--url", api.url, env=env)
    assert no_key.returncode == 2
    assert "Credentials required" in no_key.stderr and "--api-key" in no_key.stderr
    bad = cli("run", "simple", "-i", "n=x", "--url", api.url, "--api-key", API_KEY, env=env)
    assert bad.returncode == 2 and "n: Not a valid integer." in bad.stderr
    unknown = cli("run", "nosuch", "--url", api.url, "--api-key", API_KEY, env=env)
    assert unknown.returncode == 1 and "nosuch" in unknown.stderr
    for result in (no_key, bad, unknown):
        assert "Traceback" not in result.stderr


def test_json_of_a_lone_surrogate_is_refused_in_one_line_before_any_request(api, env):
    """httpx could not encode the body: a 44-line UnicodeEncodeError traceback."""
    for given in (["--input", '{"n": 1, "s": "\\ud800"}'], ["-i", "n=1", "-i", 's:="\\udfff"']):
        result = cli("run", "pacing", "--detach", *given, "--url", api.url, "--api-key", API_KEY,
                     env=env)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
        assert "is half of a surrogate pair" in result.stderr
    assert flowkit.list_runs() == []


@pytest.mark.long  # waits out the 5 s given to a web app restarting: beside the rest
def test_a_web_app_that_stays_down_is_one_line_too(env):
    down = cli("follow", "01X", "--url", "http://127.0.0.1:9", "--api-key", API_KEY, env=env)
    assert down.returncode == 1
    assert re.search(r"cannot reach http://127.0.0.1:9 .*is the web app running", down.stderr)
    assert "Traceback" not in down.stderr


def test_a_run_started_while_the_web_app_restarts_waits_for_it(env, worker):
    """``flowkit dev`` restarts the web app at each change: a `flowkit run` in the second
    that took failed at once ("cannot reach ..."), and started nothing."""
    from flowkit.testing import free_port

    port = free_port()
    command = subprocess.Popen(
        [sys.executable, "-m", "flowkit.cli", "run", "simple", "-i", "n=1", "--url",
         f"http://127.0.0.1:{port}", "--api-key", API_KEY], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = command.stderr.readline()  # refused: it says it waits, and does
        assert f"http://127.0.0.1:{port} refuses connections" in said, said
        assert "waiting up to 5 s" in said
        for _ in serve(make_app(), port=port):
            out, err = command.communicate(timeout=60)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 0, err
    assert json.loads(out[out.index("{"):]) == {"n": 4}


def test_a_url_whose_host_does_not_resolve_is_not_waited_for(env):
    """Only a refused connection is a web app restarting: a typo in the host name waited
    5 s and was said to refuse connections."""
    result = cli("run", "simple", "-i", "n=1", "--url", "http://no-such-host.invalid:8000",
                 "--api-key", API_KEY, env=env)
    assert result.returncode == 1
    assert "refuses connections" not in result.stderr
    assert "cannot reach http://no-such-host.invalid:8000" in result.stderr


def test_a_server_without_api_keys_is_not_told_to_be_sent_one(env):
    """Its 401 says it has no API keys; the CLI added "pass --api-key" all the same."""
    from tests.api.conftest import make_app, serve

    for served in serve(make_app(keys=[])):
        refused = cli("run", "simple", "-i", "n=1", "--url", served.url, env=env)
        assert refused.returncode == 2, refused.stderr
        assert "has no API keys" in refused.stderr and "--token" in refused.stderr
        assert "--api-key" not in refused.stderr


def test_follow_from_a_finished_run_s_last_event_ends_at_once(api, env, client):
    """The stream of a finished run followed from its last event ends with no event: the
    CLI reconnected every second for ever."""
    created = client.post("/workflows/simple/runs", json={"n": 1}).json()
    handle = flowkit.get_run(created["id"])
    handle.wait(20)
    last = handle.events()[-1].id
    result = cli("follow", created["id"], "--after", last, "--json", "--url", api.url,
                 "--api-key", API_KEY, env=env)  # cli()'s timeout: 60 s
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_a_token_on_the_command_line_wins_over_the_environment_s_key(api, env, client):
    created = client.post("/workflows/simple/runs", json={"n": 1}).json()
    result = cli("follow", created["id"], "--url", api.url, "--token", created["token"],
                 "--json", env={**env, "FLOWKIT_URL": "", "FLOWKIT_API_KEY": "stale-key"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["type"] == "run.succeeded"


@contextlib.contextmanager
def answering(answer):
    """A web server (its URL) whose every GET and POST gets ``answer(path)``: a status, a
    body, a Content-Type and more headers."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def respond(self) -> None:
            status, body, content, headers = answer(self.path)
            self.send_response(status)
            for name, value in {"Content-Type": content, **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = respond

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture
def not_flowkit():
    """A web server that is not flowkit's API: HTML for everything, JSON of another kind
    under /json, and under /code<NNN> that status with an error of another shape."""
    def answer(path: str):
        status = int(path[5:8]) if path.startswith("/code") else 200
        body, kind = ((b'{"ok": true}', "application/json") if path.startswith("/json")
                      else (b'{"error": "nope", "message": "other"}', "application/json")
                      if status != 200 else (b"<html>hello</html>", "text/html"))
        return status, body, kind, {}

    with answering(answer) as url:
        yield url


@pytest.mark.parametrize("args", [["run", "simple", "-i", "n=1"], ["follow", "01X"]])
@pytest.mark.parametrize("path, what", [("", "HTTP 200, text/html"),
                                        ("/json", "a JSON document that is not a run")])
def test_a_url_that_is_not_flowkit_s_api_says_so(env, not_flowkit, args, path, what):
    result = cli(*args, "--url", not_flowkit + path, "--api-key", API_KEY, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"flowkit {args[0]}: {not_flowkit + path} answered with {what}, not flowkit's API: is "
        "--url (or FLOWKIT_URL) where your app mounts flowkit's blueprint, e.g. "
        "https://app.example.com/flowkit?")


@pytest.mark.parametrize("args", [["run", "simple", "-i", "n=1"], ["follow", "01X"]])
@pytest.mark.parametrize("status, code, says", [
    (401, 2, "HTTP 401 from {url}"), (404, 1, "{base} answered with HTTP 404 for"),
    (429, 1, "HTTP 429 from {url}"), (500, 1, "HTTP 500 from {url}")])
def test_an_error_of_another_shape_is_one_line(env, not_flowkit, args, status, code, says):
    """A proxy's or another app's ``{"error": "nope"}`` (a string, not flowkit's object)
    was an AttributeError traceback."""
    base = f"{not_flowkit}/code{status}"
    result = cli(*args, "--url", base, "--api-key", API_KEY, env=env)
    assert (result.returncode, "Traceback" in result.stderr) == (code, False), result.stderr
    url = base + ("/workflows/simple/runs" if args[0] == "run" else "/runs/01X")
    assert result.stderr.startswith(f"flowkit {args[0]}: " + says.format(url=url, base=base))
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["run", "simple", "-i", "n=1"], ["follow", "01X"]])
@pytest.mark.parametrize("path", ["", "/code500", "/code401"])
def test_a_url_s_password_is_never_shown(env, not_flowkit, args, path):
    """Every message printed the --url as given: its password stayed in the scrollback, in
    a CI log."""
    keyless = {k: v for k, v in env.items() if k != "FLOWKIT_API_KEY"}
    host = not_flowkit.removeprefix("http://")
    # the URL as given, or as requested (its query after the request's path)
    for url, shown in ((f"http://admin:s3cretPW@{host}{path}",
                        re.escape(f"http://***@{host}{path}")),
                       (f"{not_flowkit}{path}?password=s3cretPW", r"\?password=\*\*\*( |$)")):
        result = cli(*args, "--url", url, env=keyless)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert re.search(shown, result.stderr, re.M), result.stderr
        assert "s3cretPW" not in result.stderr, result.stderr


def basic_auth_app():
    """An app whose ``authorize`` lets in the Basic auth of user admin, password s3cretPW."""
    return make_app(keys=[], authorize=lambda request: request.authorization is not None
                    and request.authorization.password == "s3cretPW")


def test_a_user_and_password_in_the_url_go_as_basic_auth_shown_redacted(env):
    """Basic auth for an app's ``authorize`` (or a proxy's) works from the --url; the follow
    line printed after the start showed the password."""
    keyless = {k: v for k, v in env.items() if k != "FLOWKIT_API_KEY"}
    for served in serve(basic_auth_app()):
        host = served.url.removeprefix("http://")
        result = cli("run", "simple", "-i", "n=1", "--detach", "--url",
                     f"http://admin:s3cretPW@{host}", env=keyless)
        assert result.returncode == 0, result.stderr
        run_id = result.stdout.strip()
        assert f"follow it: flowkit follow {run_id} --url http://***@{host}" in result.stderr
        assert "s3cretPW" not in result.stderr


@pytest.mark.parametrize("credential", [["--api-key", API_KEY], ["--token", "a-run-token"]])
def test_a_user_and_password_in_the_url_beside_a_key_is_a_usage_error(env, credential):
    """httpx sent the URL's user and password as Basic auth in place of the bearer key,
    unsaid; the 401 then said to set the FLOWKIT_API_KEY that was set."""
    for served in serve(basic_auth_app()):
        host = served.url.removeprefix("http://")
        result = cli("follow", "01X", "--url", f"http://admin:s3cretPW@{host}", *credential,
                     env=env)
        assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
        assert result.stderr.strip() == (
            f"flowkit follow: --url (or FLOWKIT_URL) http://***@{host} holds a user and "
            "password, which would be sent as Basic auth in place of the API key or run "
            "token (both go in the Authorization header): drop them from --url, and give the "
            "key with --api-key or FLOWKIT_API_KEY.")


@pytest.mark.parametrize("name, why", [
    ("%73imple", ""), ("simple?x", ""), ("simple#x", ""), ("..", ""),
    ("simple/runs?", " (a workflow's name is 1 to 200 characters, without spaces, '/' or ':')")])
def test_a_workflow_name_is_one_segment_of_the_path(api, env, name, why):
    """The name went into the path unescaped: `%73imple` and `simple/runs?` started simple,
    `simple?x` was "The method is not allowed for the requested URL."."""
    result = cli("run", name, "-i", "n=1", "--detach", "--url", api.url, "--api-key", API_KEY,
                 env=env)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr.startswith(f"flowkit run: No workflow named {name!r}{why}."), \
        result.stderr


@pytest.mark.parametrize("run_id", ["../runs", "..", ".", "01X?x", "01X#x", "%30", "a/b"])
def test_a_run_id_is_one_segment_of_the_path(api, env, run_id):
    """The id went into the path unescaped: `../runs` and `ID?x` were said to be a --url
    that is not flowkit's API."""
    result = cli("follow", run_id, "--url", api.url, "--api-key", API_KEY, env=env)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert result.stderr.strip() == (
        f"flowkit follow: No run {run_id!r} (unknown, or expired after its retention).")


def test_a_run_that_leaves_redis_while_followed_is_said_to_be_gone(env, worker, store):
    """Its stream's last message, ``event: not_found`` with the API's error, was read as an
    event without a type: "not flowkit's API: is --url ... where your app mounts ...?"."""
    for served in serve(make_app(ping_interval=0.3)):
        created = start(served.client(), "approval", {"n": 1})
        follow = subprocess.Popen(
            [sys.executable, "-m", "flowkit.cli", "follow", created["id"], "--url", served.url,
             "--api-key", API_KEY, "--json"], env={**env, "FLOWKIT_URL": ""},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for line in follow.stdout:  # until it waits for its input
                if json.loads(line)["type"] == "run.waiting":
                    break
            store.redis.delete(store.keys.events(created["id"]), store.keys.run(created["id"]))
            _, stderr = follow.communicate(timeout=30)
        finally:
            if follow.poll() is None:
                follow.kill()
        assert follow.returncode == 1, stderr
        assert stderr.strip() == (
            f"flowkit follow: run {created['id']}: This run no longer exists (its retention "
            "ran out, or it was deleted).")


def test_a_run_whose_first_reads_are_answered_503_is_followed_through_them(env, worker):
    """The start acknowledged, then the web process restarting (503 server_restarting):
    the command read the run once, at once, and exited 1 with "send the request again"
    (which started a second run), never naming the run it had started."""
    from flowkit.api.errors import ApiError

    refusals = [503, 503]

    def authorize(request) -> bool:
        if request.method == "GET" and refusals:  # what a process told to stop answers
            refusals.pop()
            raise ApiError(503, "server_restarting", "This server is shutting down: send the "
                           "request again (a stream resumes from its last event id).",
                           headers={"Retry-After": "1", "Connection": "close"})
        return True

    keyless = {k: v for k, v in env.items() if k != "FLOWKIT_API_KEY"}
    for served in serve(make_app(keys=[], authorize=authorize)):
        result = cli("run", "simple", "-i", "n=1", "--url", served.url, env=keyless)
    assert result.returncode == 0, result.stderr
    assert refusals == []
    # once, for the outage: the stream is what waits it out
    assert re.fullmatch(r"flowkit: the stream of run \S+ is away \(This server is shutting "
                        r"down: .*\); reconnecting from event 0-0 \.\.\.\n", result.stderr)
    assert json.loads(result.stdout[result.stdout.index("{"):]) == {"n": 4}


@contextlib.contextmanager
def alice_holds_her_stream():
    """A server whose caller ``alice`` (Bearer alice-secret) may hold one stream at a time,
    and holds it; yields the server and that stream's response (close it to let it go: the
    server sees it at its next ping, one a second)."""
    app = make_app(keys=[], streams_per_caller=1, ping_interval=1, authorize=lambda request:
                   "alice" if request.headers.get("Authorization") == "Bearer alice-secret"
                   else None)
    for served in serve(app):
        with served.client(key="alice-secret") as alice:
            holder = start(alice, "approval", {"n": 1})
            try:
                with alice.stream("GET", f"/runs/{holder['id']}/events",
                                  headers={"Accept": "text/event-stream"}) as held:
                    assert held.status_code == 200  # alice's one stream, taken
                    yield served, held
            finally:
                flowkit.cancel(holder["id"])


def test_a_follow_refused_a_stream_waits_for_one_and_goes_on(env, worker, store):
    """A 429 for the caller's streams (a dashboard tab holds them) after the start was
    acknowledged ended the command: the run went on, unfollowed. It waits out Retry-After
    until a stream is free, says so once, and follows the run to its end."""
    with alice_holds_her_stream() as (served, held):
        follow = subprocess.Popen(
            [sys.executable, "-m", "flowkit.cli", "run", "simple", "-i", "n=1",
             "--url", served.url, "--api-key", "alice-secret"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = follow.stderr.readline()
        held.close()
        out, err = follow.communicate(timeout=60)  # a stream is free: it follows
    assert re.fullmatch(r"flowkit: following run \S+ waits for a stream of its own \(This "
                        r"caller already holds 1 streams open on this server.*\); trying again "
                        r"every 5 s for up to 120 s \.\.\.\n", said), said
    assert follow.returncode == 0 and "Traceback" not in err, err
    assert json.loads(out[out.index("{"):]) == {"n": 4}


def test_a_follow_that_gets_no_stream_names_the_run_and_says_not_to_start_it_again(
        env, worker, store, monkeypatch):
    """Past its wait, a follow refused a stream names the run: trying again would start a
    second one."""
    from flowkit.cli import remote  # noqa: PLC0415

    monkeypatch.setattr(remote, "BUSY_WAIT_SECONDS", 0.5)
    with alice_holds_her_stream() as (served, _):
        runs = remote.RemoteRuns(served.url, "alice-secret")
        run = runs.start("simple", {"n": 1})
        with pytest.raises(flowkit.FlowkitError, match="This caller already holds 1 streams "
                           "open on this server"):
            list(runs.events(run["id"], "0-0"))


def test_a_url_without_flowkit_s_routes_says_so(api, env):
    result = cli("follow", "01X", "--url", api.url + "/nope", "--api-key", API_KEY, env=env)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        f"flowkit follow: {api.url}/nope answered with HTTP 404 for /nope/runs/01X, not "
        "flowkit's API")


def _answer_as_hinted(api, run_id: str, options: list[str], env: dict, expected: str,
                      fill, shell_env: dict) -> tuple[str, str]:
    """Follow the waiting run in a pipe, check its answer hint is ``expected``, run that
    command (``fill`` puts in the placeholders) and see it answer the run. The hint's line
    and the follow's output."""
    follow = subprocess.Popen(
        [sys.executable, "-m", "flowkit.cli", "follow", run_id, "--url", api.url, *options],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        answer = next(line for line in follow.stdout if "answer: " in line)
        command = answer[answer.index("answer: ") + len("answer: "):].rstrip("\n")
        assert command == expected
        sent = subprocess.run(["sh", "-c", fill(command)], env=shell_env, capture_output=True,
                              text=True, timeout=30)
        assert json.loads(sent.stdout)["outcome"] == "resumed", sent.stdout
        stdout, stderr = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            flowkit.get_run(run_id).cancel()
            follow.wait(30)
    assert follow.returncode == 0, stderr
    return answer, stdout


def test_a_piped_follow_keeps_each_line_whole_and_its_answer_is_the_api_s_call(
        api, env, client, worker):
    """In a pipe the answer line was wrapped at 80 columns, mid-command. Over --url it named
    ``flowkit input RUN approval '<JSON>'``, which has no --url and needs the deployment's
    Redis: it is the API's call, and that call answers the run."""
    created = client.post("/workflows/approval/runs", json={"n": 5}).json()
    answer, stdout = _answer_as_hinted(
        api, created["id"], ["--api-key", API_KEY], {**env, "COLUMNS": "80"},
        f"curl -X POST {api.url}/runs/{created['id']}/input/approval -H \"Authorization: "
        "Bearer $FLOWKIT_API_KEY\" -H 'Content-Type: application/json' -d '<JSON>'",
        lambda command: command.replace("<JSON>", '{"ok": true}'),
        {**env, "FLOWKIT_API_KEY": API_KEY})
    assert len(answer) > 80
    assert "flowkit input" not in stdout


def test_a_follow_with_a_run_token_hints_at_the_token_where_it_answers_and_a_key_elsewhere(
        api, env, client, worker):
    """With ``--token`` the answer call said ``Bearer $FLOWKIT_API_KEY``, a variable such a
    caller may not have; the token answers its run (the retry call needs an API key: 403
    for a run token). The token itself is not printed: a placeholder says where it goes."""
    created = client.post("/workflows/approval/runs", json={"n": 5}).json()
    keyless = {k: v for k, v in env.items() if k != "FLOWKIT_API_KEY"}
    _, stdout = _answer_as_hinted(
        api, created["id"], ["--token", created["token"]], keyless,
        f"curl -X POST {api.url}/runs/{created['id']}/input/approval -H 'Authorization: "
        "Bearer <run token>' -H 'Content-Type: application/json' -d '<JSON>'",
        lambda command: command.replace("<JSON>", '{"ok": true}').replace(
            "<run token>", created["token"]), keyless)
    assert created["token"] not in stdout

    failed = client.post("/workflows/exhausted/runs", json={"n": 1}).json()
    result = cli("follow", failed["id"], "--url", api.url, "--token", failed["token"],
                 env=keyless)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"retry it from the failed step: curl -X POST {api.url}/runs/{failed['id']}/retry "
        "-H \"Authorization: Bearer $FLOWKIT_API_KEY\"")


def test_a_failed_run_followed_over_http_says_the_api_s_retry_call(api, env):
    """Over --url it said ``flowkit retry RUN``, which has no --url and needs the
    deployment's Redis: it is the API's call, and that call retries the run."""
    result = cli("run", "exhausted", "-i", "n=1", "--url", api.url, "--api-key", API_KEY,
                 env=env)
    assert result.returncode == 1, result.stderr
    run_id = re.search(r"following run (\S+)", result.stdout).group(1)
    line = result.stdout.splitlines()[-1]
    call = (f"curl -X POST {api.url}/runs/{run_id}/retry -H \"Authorization: Bearer "
            "$FLOWKIT_API_KEY\"")
    assert line == f"retry it from the failed step: {call}"
    sent = subprocess.run(["sh", "-c", call], env={**env, "FLOWKIT_API_KEY": API_KEY},
                          capture_output=True, text=True, timeout=30)
    assert json.loads(sent.stdout)["state"] == "queued", sent.stdout
    flowkit.get_run(run_id).wait(20)


@pytest.fixture
def open_api(flowkit_env, worker):
    yield from serve(make_app(keys=[], open=True))


def test_over_an_open_api_the_hinted_call_sends_no_key_the_cli_does_not_have(open_api, env):
    """flowkit dev's API is open and exports FLOWKIT_URL: the retry call said
    ``Authorization: Bearer $FLOWKIT_API_KEY``, of a variable no one had set."""
    plain = {k: v for k, v in env.items() if k != "FLOWKIT_API_KEY"}
    result = cli("run", "exhausted", "-i", "n=1", "--url", open_api.url, env=plain)
    assert result.returncode == 1, result.stderr
    run_id = re.search(r"following run (\S+)", result.stdout).group(1)
    call = f"curl -X POST {open_api.url}/runs/{run_id}/retry"
    assert result.stdout.splitlines()[-1] == f"retry it from the failed step: {call}"
    sent = subprocess.run(["sh", "-c", call], env=plain, capture_output=True, text=True,
                          timeout=30)
    assert json.loads(sent.stdout)["state"] == "queued", sent.stdout
    flowkit.get_run(run_id).wait(20)


def test_a_follow_says_when_the_server_cannot_read_redis_and_when_it_can_again(
        flowkit_env, env, tmp_path):
    """Through a Redis outage the follow was silent: the stream stayed open, and looked hung."""
    from flowkit.testing import LocalRedis

    from .helpers import Gunicorn

    with LocalRedis() as redis_server:
        served = {**flowkit_env, "FLOWKIT_REDIS_URL": redis_server.url,
                  "FLOWKIT_BROKER_URL": redis_server.url}
        web = Gunicorn(served, tmp_path / "gunicorn.log", FLOWKIT_API_KEYS=API_KEY).start()
        follow = None
        try:
            created = json.loads(cli("run", "simple", "--input", '{"n": 1}', "--url", web.url,
                                     "--api-key", API_KEY, "--detach", "--json",
                                     env=env).stdout)  # no worker: it stays queued
            follow = subprocess.Popen(
                [sys.executable, "-u", "-m", "flowkit.cli", "follow", created["id"], "--url",
                 web.url, "--api-key", API_KEY, "--json"], env={**env, "FLOWKIT_URL": ""},
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert json.loads(line_within(follow.stdout, 30))["type"] == "run.queued"
            redis_server.stop()
            said = line_within(follow.stderr, 30)
            assert said.startswith("flowkit: the server cannot read the events of run "), said
            redis_server.start()
            said = line_within(follow.stderr, 30)
            assert said == f"flowkit: the server reads the events of run {created['id']} again.\n"
        finally:
            if follow is not None:
                follow.kill()
                follow.communicate(timeout=10)
            web.stop()


def line_within(stream, seconds: float) -> str:
    """The next line of a child's pipe, or "" when none comes in time (not a hang)."""
    import select

    ready, _, _ = select.select([stream], [], [], seconds)
    return stream.readline() if ready else ""


@pytest.fixture
def foreign_stream():
    """A server that answers a run's record as flowkit does, then an event stream that is
    not flowkit's: under /<kind>/..., ``text`` data that is not JSON, ``typeless`` JSON
    events without a type, ``array`` JSON arrays, ``html`` an HTML page."""
    streams = {"text": "data: not json\n\n", "typeless": 'data: {"type": 5, "ts": "abc"}\n\n',
               "array": "data: [1, 2]\n\n"}

    def answer(path: str):
        kind = path.split("/")[1]
        if "/events" not in path:
            return 200, b'{"id": "01X", "state": "running"}', "application/json", {}
        if kind == "html":
            return 200, b"<html>a login page</html>", "text/html", {}
        return 200, streams[kind].encode(), "text/event-stream", {}

    with answering(answer) as url:
        yield url


@pytest.mark.parametrize("kind, what", [
    ("text", "an event stream whose data is not JSON objects"),
    ("array", "an event stream whose data is not JSON objects"),
    ("typeless", "an event stream whose events are not flowkit's"),
    ("html", "text/html for an event stream")])
def test_an_event_stream_that_is_not_flowkit_s_says_so_at_once(env, foreign_stream, kind,
                                                               what):
    """Data that is not JSON, or events without a type, ended in a traceback; an HTML page
    (a proxy's login) was taken for an outage and retried for two minutes."""
    base = f"{foreign_stream}/{kind}"
    result = cli("follow", "01X", "--url", base, "--api-key", API_KEY, env=env)
    assert (result.returncode, "Traceback" in result.stderr) == (1, False), result.stderr
    assert result.stderr.strip() == (
        f"flowkit follow: {base} answered with {what}, not flowkit's API: is --url (or "
        "FLOWKIT_URL) where your app mounts flowkit's blueprint, e.g. "
        "https://app.example.com/flowkit?")


@pytest.mark.parametrize("url, why", [
    ("http://[::1", "Invalid port"), ("http://127.0.0.1:abc", "Invalid port"),
    ("notaurl", "not an http:// or https:// URL with a host"),
    ("ftp://files.example.com", "not an http:// or https:// URL with a host"),
    ("http://app..example.com", "its host 'app..example.com' has an empty label (two dots "
                                "in a row?)"),
    ("http://.example.com/flowkit", "its host '.example.com' has an empty label"),
    (f"http://{'a' * 64}.example.com", "its host has a label of 64 characters (DNS allows 63)"),
    ("http://xn--zz", "its host is not a DNS name: Invalid A-label"),
    ("http://127.0.0.1:99999", "its port 99999 is not 1-65535")])
def test_a_url_that_is_not_one_is_a_usage_error(env, url, why):
    """A malformed --url ended in httpx's InvalidURL traceback, or was said to be a server
    that could not be reached (exit 1); a host DNS cannot spell (a doubled dot, a label
    over 63 characters, an "xn--" label that is no punycode) was a 66-line traceback from
    the idna codec, and a port past 65535 was waited for as a server refusing connections."""
    for given in (["--url", url], []):
        result = subprocess.run(
            [sys.executable, "-m", "flowkit.cli", "follow", "01X", *given, "--api-key",
             API_KEY], env={**env, "FLOWKIT_URL": url}, capture_output=True, text=True,
            timeout=60)
        assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
        said = result.stderr.strip()
        assert said.startswith(f"flowkit follow: --url (or FLOWKIT_URL) {url!r} is not a URL "
                               f"flowkit can reach ({why}")
        assert "cannot reach" not in said and len(said.splitlines()) == 1


@pytest.mark.parametrize("key", ["clé", "k-1\u00a0", "k-1\nX-Evil: 1", "“k-1”"])
def test_an_api_key_that_cannot_be_a_header_says_so_without_echoing_it(env, key):
    """A non-ASCII key ended in a UnicodeEncodeError traceback; a line break in it was
    said to be an unreachable server, with the key echoed in the message."""
    result = cli("follow", "01X", "--url", "http://127.0.0.1:9", "--api-key", key, env=env)
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
    assert "printable ASCII text" in result.stderr
    assert key.strip() not in result.stderr and "k-1" not in result.stderr


@pytest.fixture
def odd_server():
    """A server answering as a proxy or another app may: a redirect (/moved), a plain-text
    500 (/broken), a 413 of flowkit's shape (/large)."""
    def answer(path: str):
        return {
            "moved": (302, b"", "text/plain", {"Location": "https://sso.example.com/login"}),
            "broken": (500, b"Internal Server Error", "text/plain", {}),
            "large": (413, b'{"error": {"code": "payload_too_large", "message": '
                           b'"The body is over the 100-byte limit."}}', "application/json", {}),
        }[path.split("/")[1]]

    with answering(answer) as url:
        yield url


@pytest.mark.parametrize("path, code, says", [
    ("/moved", 2, "HTTP 302 from {url}, to https://sso.example.com/login: give --url (or "
                  "FLOWKIT_URL) the address your app's flowkit blueprint answers at, with no "
                  "redirect (https://...?)"),
    ("/broken", 1, "HTTP 500 from {url} (text/plain, not flowkit's JSON error): is --url (or "
                   "FLOWKIT_URL) flowkit's API, and is the server well? Its log says why."),
    ("/large", 2, "The body is over the 100-byte limit.")])
def test_a_redirect_a_bare_error_and_an_input_too_large_say_what_to_do(env, odd_server, path,
                                                                      code, says):
    """A redirect and a plain-text 500 were a bare "HTTP 302 from ..."; an input over the
    server's limit exited 1, where every other refusal of an input exits 2."""
    base = odd_server + path
    result = cli("run", "simple", "-i", "n=1", "--url", base, "--api-key", API_KEY, env=env)
    assert (result.returncode, "Traceback" in result.stderr) == (code, False), result.stderr
    url = base + "/workflows/simple/runs"
    assert result.stderr.strip() == "flowkit run: " + says.format(url=url)


def test_an_input_over_the_payload_limit_is_a_usage_error(env):
    result = cli("run", "pacing", "-A", "tests.workflows", "--detach", "--input",
                 json.dumps({"n": 1, "pad": "x" * 2000}),
                 env={**env, "FLOWKIT_MAX_PAYLOAD_BYTES": "1000"})
    assert (result.returncode, "Traceback" in result.stderr) == (2, False), result.stderr
    assert "over the 1000-byte limit (FLOWKIT_MAX_PAYLOAD_BYTES)" in result.stderr


def test_a_url_with_a_query_sends_it_with_every_request(api, env, caplog):
    """A gateway's ``?code=`` on --url: httpx joined each path after the query
    (``/flowkit?code=xruns/01X``), and the 404 said to check --url."""
    with caplog.at_level(logging.INFO, logger="werkzeug"):  # the server's access log
        result = cli("run", "simple", "-i", "n=1", "--url", api.url + "/?code=gateway-key#top",
                     "--api-key", API_KEY, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout[result.stdout.index("{"):]) == {"n": 4}
    sent = [r.getMessage() for r in caplog.records if "code=gateway-key" in r.getMessage()]
    assert any("POST /workflows/simple/runs?code=gateway-key " in line for line in sent), sent
    assert any("/events?" in line for line in sent), sent
    # the key is a secret: no message shows it (only password= was blanked)
    failed = cli("follow", "01X", "--url", api.url + "/nope?code=gateway-key", "--api-key",
                 API_KEY, env=env)
    assert failed.returncode == 1 and "code=***" in failed.stderr, failed.stderr
    assert "gateway-key" not in failed.stderr
