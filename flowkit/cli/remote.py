"""A deployment's REST API as the CLI uses it (``--url``): start, read and follow runs.

The same commands work on Redis directly and over HTTP; this module is the HTTP side,
with the API's own answers turned into the CLI's errors: a 422's field messages, a
401's "send an API key", an unreachable server's "is it running?". Events are followed
over SSE (httpx-sse), resumed from the last event id when the connection drops, as a
browser does.

Every message shows the URL redacted (``flowkit.urls.redacted``): a password in it
(``user:pw@``, ``?password=``) would stay in a terminal's scrollback and a CI log. A user
and password in the URL are sent as Basic auth, for an app whose ``authorize`` reads them
(or a proxy in front of it); beside an API key or run token they are refused, as both go
in the one Authorization header and httpx let the URL's replace the key, unsaid.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import connect_sse

from ..engine.control import GONE, not_found
from ..errors import FlowkitError, RunNotFound, ValidationError, WorkflowNotFound
from ..events import START, TERMINAL
from ..urls import redacted_query
from ..workflow import WORKFLOW_NAME, WORKFLOW_NAME_RULE
from .usage import UsageError, quoted

#: Seconds a dropped event stream waits before it reconnects (the server restarted, a
#: proxy cut the connection).
RECONNECT_SECONDS = 1.0
#: Reconnections in a row without a new event before following gives up (two minutes: a
#: deploy, a Redis restart).
RECONNECT_TRIES = 120
#: Seconds a command waits for a server that refuses connections before it says it cannot
#: reach it: a web app restarting (``flowkit dev`` restarts it at each change) is back
#: within about two, and a start or a follow made meanwhile failed at once.
CONNECT_WAIT_SECONDS = 5.0
#: Seconds a follow waits for a stream of its own when the server says this caller holds
#: its quota of streams (429 ``too_many_streams``: a dashboard tab, another follow), trying
#: again after each ``Retry-After``; it gave up at once, the run going on unfollowed.
BUSY_WAIT_SECONDS = 120.0
#: How a Flask app's 404 for a path it has no route for begins (werkzeug's NotFound): the
#: --url is wrong, the run or workflow is not what is missing.
_NO_ROUTE = "The requested URL was not found"


def _bad_url(url: str, why: str) -> UsageError:
    shown = repr(redacted_query(url)) if len(url) <= 200 else f"of {len(url)} characters"
    return UsageError(f"--url (or FLOWKIT_URL) {shown} is not a URL flowkit can reach "
                      f"({why}): give where your app mounts flowkit's blueprint, e.g. "
                      "https://app.example.com/flowkit or http://127.0.0.1:8000")


def _host_problem(host: str) -> str | None:
    """Why DNS cannot spell ``host``, if it cannot: a doubled dot or a label over 63
    characters ended in a traceback from the socket layer's idna codec at the first
    request (an IP address has no labels to check)."""
    if ":" in host or re.fullmatch(r"[0-9.]+", host):  # an IPv6 or IPv4 address
        return None
    for label in host.removesuffix(".").split("."):  # "example.com." is absolute, not empty
        if not label:
            return f"its host {host!r} has an empty label (two dots in a row?)"
        if len(label) > 63:
            return f"its host has a label of {len(label)} characters (DNS allows 63)"
    return None


def _port_problem(port: int | None) -> str | None:
    # 99999 was tried as a server that refuses connections, waited for 5 s
    if port is not None and not 0 < port < 65536:
        return f"its port {port} is not 1-65535"
    return None


def _segment(text: str) -> str:
    """``text`` as one segment of a URL path: a "?", "#" or "%65" in it changed the endpoint
    called (`flowkit run '%65cho'` started echo). "." and ".." are spelled %2E, or httpx
    took them for dot segments."""
    segment = quote(text, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


def _run_segment(run_id: str) -> str:
    """A run id as a path segment. One holding "/" is no run (ids are ULIDs), and the
    server, which decodes %2F before routing, would find no route: the CLI said the --url
    was not flowkit's API; it says there is no such run, as it does on Redis."""
    if "/" in run_id or not run_id:
        raise not_found(run_id)
    return _segment(run_id)


#: What a remote CLI sends the API: an API key (``--api-key``, ``FLOWKIT_API_KEY``), a run
#: token (``--token``); None for an open API.
KEY, TOKEN = "key", "token"


class Unavailable(FlowkitError):
    """The server answered 502, 503 or 504: Redis away, the process restarting, a proxy with
    no upstream. A follower waits and reconnects (it quit, exit 1, while its run went on)."""


class RemoteRuns:
    """Runs of the deployment at ``url`` (the blueprint's mount point, e.g.
    ``https://app.example.com/flowkit``), with an API key or a run token as bearer."""

    def __init__(self, url: str, credential: str | None, run_token: bool = False) -> None:
        self.url = url.rstrip("/")
        self.shown = redacted_query(self.url)  # what messages say: no password in a CI log
        try:
            parsed = httpx.URL(self.url)
            host = parsed.host  # decoded here: a label "xn--zz" is no punycode (IDNAError)
        except httpx.InvalidURL as exc:  # "http://[::1", a port "abc"
            raise _bad_url(url, str(exc)) from None
        except UnicodeError as exc:  # idna's IDNAError, raised through every request after
            raise _bad_url(url, f"its host is not a DNS name: {exc}") from None
        if parsed.scheme not in ("http", "https") or not host:
            raise _bad_url(url, "not an http:// or https:// URL with a host")
        why = _host_problem(parsed.raw_host.decode("ascii")) or _port_problem(parsed.port)
        if why:
            raise _bad_url(url, why)
        if credential is not None and not (credential.isascii() and credential.isprintable()):
            # an HTTP header is ASCII: a smart quote, a non-breaking space or a newline
            # pasted with the key ended in a UnicodeEncodeError, or an "unreachable" server
            # whose message echoed the key
            raise UsageError("The API key or run token holds a character an HTTP header "
                             "cannot (a smart quote, a non-breaking space, a line break, "
                             "pasted with it?): give it as printable ASCII text.")
        if parsed.userinfo and credential:
            raise UsageError(
                f"--url (or FLOWKIT_URL) {self.shown} holds a user and password, which would "
                "be sent as Basic auth in place of the API key or run token (both go in the "
                "Authorization header): drop them from --url, and give the key with "
                "--api-key or FLOWKIT_API_KEY.")
        headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        #: What requests carry (an API key, a run token, nothing): the API calls the CLI
        #: hints at send the same.
        self.credential = (TOKEN if run_token else KEY) if credential else None
        # a query (a gateway's ``?code=``) goes with every request: left in the base URL,
        # httpx joined each path after it (``/flowkit?code=xruns/01X``), a 404 said to
        # check --url
        self.http = httpx.Client(base_url=parsed.copy_with(query=None, fragment=None),
                                 params=parsed.params, headers=headers, timeout=30.0)

    def start(self, workflow: str, input: Any) -> dict[str, Any]:
        if not re.fullmatch(WORKFLOW_NAME, workflow):  # "echo/runs?" started echo
            raise WorkflowNotFound(f"No workflow named {quoted(workflow)} (a workflow's name "
                                   f"is {WORKFLOW_NAME_RULE}).")
        return self._run(self._call("POST", f"/workflows/{_segment(workflow)}/runs",
                                    json=input))

    def get(self, run_id: str) -> dict[str, Any]:
        return self._run(self._call("GET", f"/runs/{_run_segment(run_id)}"))

    def _run(self, answer: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(answer.get("id"), str) or "state" not in answer:
            raise self._not_flowkit("a JSON document that is not a run")
        return answer

    def events(self, run_id: str, after: str) -> Iterator[dict[str, Any]]:
        """Every event after ``after`` until the run ends, reconnecting when the stream
        drops (a deploy ends streams with a reconnect hint) from the last event id. A cursor
        past the run's last event raises :class:`ValidationError` here, before any event,
        as :func:`flowkit.follow` does."""
        path = f"/runs/{_run_segment(run_id)}/events"
        if after != START:
            self._call("GET", path, params={"after": after, "limit": 1})
        return self._stream(run_id, path, after)

    def _stream(self, run_id: str, path: str, after: str) -> Iterator[dict[str, Any]]:
        cursor, tries, last, busy_since = after, 0, None, None
        while True:
            heard = False  # an event on this connection
            try:
                with connect_sse(self.http, "GET", path,
                                 params={"after": cursor, "status": "true"},
                                 timeout=None) as source:
                    if last is not None and _token_expired(source.response):  # reconnected late
                        raise _expired_while_following(run_id, cursor)
                    if source.response.status_code == 429:
                        busy_since = self._wait_for_a_stream(source.response, run_id,
                                                             busy_since)
                        continue
                    busy_since = None
                    self._check(source.response)
                    if source.response.status_code == 204:  # at the ended run's last event
                        return
                    kind = source.response.headers.get("content-type", "no content type")
                    if not kind.startswith("text/event-stream"):  # not an outage to wait out
                        raise self._not_flowkit(f"{kind.split(';')[0]} for an event stream")
                    for sse in source.iter_sse():
                        if sse.event == "token_expired":  # the stream ends with the token
                            raise _expired_while_following(run_id, cursor)
                        if sse.event == "status":  # the relay's word on itself: not an event
                            _say_status(run_id, self._json(sse.data))
                            continue
                        if sse.event == "not_found":  # its events left Redis while followed
                            raise self._gone(run_id, sse.data)
                        if sse.event != "message":  # a kind this CLI does not know: no event
                            continue
                        if not sse.data:
                            continue  # keep-alive comments
                        last = self._event(sse.data)
                        cursor, tries, heard = sse.id or cursor, 0, True
                        yield last
                # The server ends the stream after the run's latest terminal event (a
                # retried run's earlier run.failed is followed by the rest).
                if last is not None and last.get("type") in TERMINAL:
                    return
                # Nothing came: ``after`` was already past that end (a finished run
                # followed from its last event), or the stream was cut at once (a deploy);
                # done only when no event is left after the cursor (the run may have ended
                # meanwhile: its last events are still to show)
                if not heard:
                    page = self._call("GET", path,
                                      params={"after": cursor, "limit": 1})
                    if not page.get("events") and page.get("done"):
                        return
            except (httpx.TransportError, Unavailable) as exc:
                tries += 1
                if tries > RECONNECT_TRIES:
                    raise FlowkitError(f"lost the event stream of run {run_id} at {self.shown} "
                                       f"({exc}); follow it again later with --after "
                                       f"{cursor}.") from None
                if tries == 1:  # once per outage: it was silent until it gave up
                    print(f"flowkit: the stream of run {run_id} is away ({exc}); "
                          f"reconnecting from event {cursor} ...", file=sys.stderr, flush=True)
            time.sleep(RECONNECT_SECONDS)  # the stream ended before the run did: a deploy

    def _wait_for_a_stream(self, response: httpx.Response, run_id: str,
                           since: float | None) -> float:
        """A 429: this caller holds its quota of streams. Wait its Retry-After (1 to 10 s)
        and say so once; past :data:`BUSY_WAIT_SECONDS` raise the server's message."""
        now = time.monotonic()
        if since is not None and now - since > BUSY_WAIT_SECONDS:
            self._check(response)  # raises the server's message: following it failed
        try:
            pause = float(response.headers.get("retry-after", ""))
        except ValueError:  # absent, or an HTTP date: flowkit sends seconds
            pause = 5.0
        pause = min(max(pause, 1.0), 10.0) if math.isfinite(pause) else 5.0
        if since is None:
            print(f"flowkit: following run {run_id} waits for a stream of its own "
                  f"({_error_of(response)[1]}); trying again every {pause:g} s for up to "
                  f"{BUSY_WAIT_SECONDS:g} s ...", file=sys.stderr, flush=True)
        time.sleep(pause)
        return now if since is None else since

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, **kwargs)
        self._check(response)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise self._not_flowkit(f"HTTP {response.status_code}, {kind}")
        return answer

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The server's response; a refused connection (no request was sent, so a start
        is not made twice) is tried again for :data:`CONNECT_WAIT_SECONDS`."""
        deadline = time.monotonic() + CONNECT_WAIT_SECONDS
        said = False
        while True:
            try:
                return self.http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                if "refused" not in str(exc).lower() or time.monotonic() >= deadline:
                    # a name that does not resolve, a TLS failure: waiting would not help
                    raise self._unreachable(exc) from None
                if not said:
                    said = True
                    print(f"flowkit: {self.shown} refuses connections ({exc}); waiting up to "
                          f"{CONNECT_WAIT_SECONDS:g} s for it (a web app restarting) ...",
                          file=sys.stderr, flush=True)
                time.sleep(0.2)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from None

    def _json(self, data: str) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise self._not_flowkit("an event stream whose data is not JSON objects")
        return value

    def _event(self, data: str) -> dict[str, Any]:
        """One event of the stream, as flowkit sends it: a server that is not flowkit's
        ended in a traceback for data that is not JSON, or events without a type."""
        event = self._json(data)
        if not isinstance(event.get("type"), str) or not isinstance(event.get("ts", 0.0),
                                                                    int | float):
            raise self._not_flowkit("an event stream whose events are not flowkit's")
        return event

    def _gone(self, run_id: str, data: str) -> RunNotFound:
        """The run's retention ran out while it was followed, or it was deleted: the error
        JSON was read as an event without a type, "not flowkit's API: check --url"."""
        error = self._json(data).get("error")
        message = error.get("message") if isinstance(error, dict) else None
        return RunNotFound(f"run {run_id}: {message if isinstance(message, str) else GONE}")

    def _unreachable(self, exc: Exception) -> FlowkitError:
        return FlowkitError(f"cannot reach {self.shown} ({exc}); is the web app running, "
                            "and is --url (or FLOWKIT_URL) right?")

    def _not_flowkit(self, what: str) -> FlowkitError:
        return FlowkitError(f"{self.shown} answered with {what}, not flowkit's API: is --url (or "
                            "FLOWKIT_URL) where your app mounts flowkit's blueprint, e.g. "
                            "https://app.example.com/flowkit?")

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        error, message = _error_of(response)
        code = error.get("code")
        if code == "validation_error":
            fields = error.get("fields")
            raise ValidationError(fields if isinstance(fields, dict) else {}, message)
        if response.status_code == 401 and "has no API keys" in message:  # run tokens only
            raise UsageError(f"{message} (pass --token <run token>: it reads its own run)")
        if response.status_code == 401:
            raise UsageError(f"{message} (pass --api-key, or set FLOWKIT_API_KEY; a run token "
                             "reads its own run only)")
        fields = error.get("fields")
        if response.status_code == 404 and isinstance(fields, dict) and \
                isinstance(fields.get("after"), list) and fields["after"]:
            # a cursor past the run's events: its field message says where to resume from
            raise ValidationError(fields, str(fields["after"][0]))
        if response.status_code == 404 and (not error or message.startswith(_NO_ROUTE)):
            raise self._not_flowkit(f"HTTP 404 for {response.url.path}")
        if response.status_code == 404 and "/workflows/" in str(response.url):
            raise WorkflowNotFound(message)
        if response.status_code == 404:
            raise RunNotFound(message)
        if response.status_code in (502, 503, 504):
            raise Unavailable(message)
        if response.status_code == 413:  # the input is over the server's limit: fix it
            raise UsageError(message)
        if response.is_redirect:  # flowkit's API never redirects: a login, http -> https
            where = response.headers.get("location", "")
            raise UsageError(f"HTTP {response.status_code} from {redacted_query(str(response.url))}, "
                             f"to {redacted_query(where)}: give --url (or FLOWKIT_URL) the address "
                             "your app's flowkit blueprint answers at, with no redirect "
                             "(https://...?)")
        if not error:  # not flowkit's error: say what it was, and where to look
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise FlowkitError(f"{message} ({kind}, not flowkit's JSON error): is --url (or "
                               "FLOWKIT_URL) flowkit's API, and is the server well? Its log "
                               "says why.")
        raise FlowkitError(message)


def _error_of(response: httpx.Response) -> tuple[dict[str, Any], str]:
    """An error answer's ``error`` object ({} when it is not flowkit's shape: a proxy's
    ``{"error": "nope"}``) and its message (else the status and the URL, redacted)."""
    response.read()
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"HTTP {response.status_code} from {redacted_query(str(response.url))}"
    return error, message


def _say_status(run_id: str, status: dict[str, Any]) -> None:
    """A follower left silent through a Redis outage looked hung: say why, and when it ends."""
    if status.get("status") == "degraded":
        print(f"flowkit: the server cannot read the events of run {run_id} from its Redis; "
              "they will follow once it can (nothing is lost) ...", file=sys.stderr, flush=True)
    elif status.get("status") == "live":
        print(f"flowkit: the server reads the events of run {run_id} again.",
              file=sys.stderr, flush=True)


def _token_expired(response: httpx.Response) -> bool:
    if response.status_code != 401:
        return False
    response.read()
    try:
        return response.json()["error"]["code"] == "token_expired"
    except (ValueError, KeyError, TypeError):
        return False


def _expired_while_following(run_id: str, cursor: str) -> UsageError:
    return UsageError(
        f"The run token expired while following run {run_id}: follow it again with a fresh "
        f"run token (FlowKit.run_token in your app) or an API key; `--after {cursor}` goes on "
        "from here.")
