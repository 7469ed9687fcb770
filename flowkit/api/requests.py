"""Reading a request: query strings through marshmallow, the JSON body, content negotiation."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import marshmallow
from flask import g, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import LimitedStream

from ..serialization import MAX_DEPTH, TOO_LARGE, TOO_LONG, nested_too_deeply, strict_loads
from .auth import Access
from .errors import ApiError
from .schemas import MAX_WAIT_QUERY
from .state import state
from .streaming import NDJSON, SSE

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?([^,;\s\"]*)", re.IGNORECASE)
_SECONDS = re.compile(r"\d{1,9}(\.\d{1,9})?")
#: How much of a too large chunked body is read and dropped to keep the connection; past
#: it the connection is closed instead.
DRAIN_FACTOR = 16
_READ = 64 * 1024


def access() -> Access:
    """What the caller of this request may do (set before every non-public view)."""
    return g.flowkit_access


#: One instance per query schema: loading keeps no state in it, and building one costs more
#: than the load (a sixth of a millisecond, on every request).
_QUERY_SCHEMAS: dict[type[marshmallow.Schema], marshmallow.Schema] = {}


def query(schema: type[marshmallow.Schema]) -> dict[str, Any]:
    loader = _QUERY_SCHEMAS.get(schema)
    if loader is None:
        loader = _QUERY_SCHEMAS[schema] = schema()
    try:
        return loader.load(request.args.to_dict(), unknown=marshmallow.EXCLUDE)
    except marshmallow.ValidationError as exc:
        raise ApiError(400, "validation_error", "Invalid query parameters.", exc.messages) from None


def negotiated_stream() -> str | None:
    """SSE or NDJSON when the client names one explicitly (``*/*`` means JSON), with or
    without parameters (``text/event-stream; charset=utf-8`` got the JSON page: werkzeug
    matches a type with parameters only to the same parameters)."""
    accept = request.accept_mimetypes
    json_quality = max(accept.quality("application/json"), _named(accept, "application/json"))
    for kind in (SSE, NDJSON):
        quality = _named(accept, kind)
        if quality > 0:
            return kind if quality >= json_quality else None
    return None


def _named(accept: Any, kind: str) -> float:
    """The highest quality ``accept`` gives ``kind`` by name, whatever its parameters."""
    return max((quality for value, quality in accept
                if value.partition(";")[0].strip().lower() == kind), default=0)


def wait_seconds(query_wait: float | None) -> float | None:
    """How long a start may hold the request: ``?wait=`` or ``Prefer: wait=``, capped."""
    wait = query_wait
    if wait is None:
        found = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
        if found:  # as ?wait= takes it: abc, -1 and nan were ignored, 1e400 read as 1
            raw = found.group(1)
            if not _SECONDS.fullmatch(raw) or float(raw) > MAX_WAIT_QUERY:
                raise ApiError(400, "validation_error", "Invalid Prefer: wait=.", {
                    "Prefer": [f"wait={raw} is not a number of seconds from 0 to "
                               f"{MAX_WAIT_QUERY} (e.g. Prefer: wait=10)."]})
            wait = float(raw)
    return None if wait is None else min(wait, state().options.max_wait)


def check_path_text() -> None:
    """A path whose %-escapes decode to bytes that are not UTF-8 (``%ff``) is refused:
    werkzeug reads each such byte as U+FFFD, so ``/events/a%ff`` and ``/events/a%fe`` were
    one event key, and an input's name read as another than the one asked for."""
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")  # gunicorn's, werkzeug's
    try:
        if raw is not None:
            unquote_to_bytes(raw.partition("?")[0]).decode("utf-8")
        else:  # PEP 3333: the decoded bytes, as latin-1 (werkzeug's own server replaced them)
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise ApiError(400, "bad_request", "The request's path is not UTF-8 once its "
                       "%-escapes are decoded (an escape such as %ff): percent-encode the "
                       "UTF-8 bytes of each key or name (é is %C3%A9).") from None


def check_body_size(limit: int) -> None:
    """Refuse a body over ``limit`` bytes however it is framed (413, before any view runs).

    A body with a Content-Length over the limit is refused at once. A chunked body has
    none, and the WSGI layer would only cut it at the limit, silently: it is read here, up
    to one byte past the limit, and kept for the view. One past the limit, the rest is read
    and dropped, so the connection can carry the next request (past ``DRAIN_FACTOR`` times
    the limit the connection is closed instead); a refused Content-Length body is read
    after the 413 is sent (:func:`finish_body`)."""
    length = request.content_length
    if length is not None:
        if length > limit:  # read after the answer is sent (finish_body), up to the factor
            raise _too_large(limit, close=length > DRAIN_FACTOR * limit)
        return
    if "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        return
    stream = request.environ["wsgi.input"]  # the server de-chunks it and ends it
    try:
        body = _read(stream, limit + 1)
        if len(body) <= limit:
            g.flowkit_body = body
            return
        drained = _drain(stream, DRAIN_FACTOR * limit)
    except (OSError, ParseException) as exc:  # the server's de-chunking refused it
        raise ApiError(400, "bad_request", "The request's chunked body is malformed or ends "
                       f"early ({type(exc).__name__}): send it again, whole, or send it with "
                       "a Content-Length.", headers={"Connection": "close"}) from None
    raise _too_large(limit, close=not drained)


def finish_body(response: Any, limit: int) -> None:
    """Once ``response`` is sent, read and drop what is left of the request's body (a
    cancel's ignored JSON, a refused body up to ``DRAIN_FACTOR`` times ``limit``): gunicorn
    drains only 64 KiB of it and then closes the connection it answered as kept alive, and
    the client's next request on it failed. After the answer, not before: a client that
    declares a body it never sends still gets its answer at once."""
    length = request.content_length
    if not length or length > DRAIN_FACTOR * limit:
        return
    # within the limit, what the view read of request.stream is not read again
    stream = request.stream if length <= limit else \
        LimitedStream(request.environ["wsgi.input"], length)
    response.call_on_close(lambda: _drop(stream))


def _drop(stream: Any) -> None:
    try:
        while stream.read(_READ):
            pass
    except Exception:  # noqa: BLE001 - the client went away: no connection to keep
        pass


def _read(stream: Any, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        piece = stream.read(min(_READ, size - got))
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _drain(stream: Any, budget: int) -> bool:
    """Read and drop the rest of the body; False when it goes on past ``budget`` bytes."""
    while budget > 0:
        piece = stream.read(min(_READ, budget))
        if not piece:
            return True
        budget -= len(piece)
    return False


def _too_large(limit: int, close: bool = False) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"Request body over {limit} bytes (FLOWKIT_API_MAX_BODY_BYTES); send "
                    "less, or store large data elsewhere and pass a reference.",
                    headers={"Connection": "close"} if close else None)


def _not_json() -> ApiError:
    return ApiError(400, "invalid_json", "The request body is not valid JSON (strict: no NaN "
                    "or Infinity, no lone surrogates).")


def _too_deep() -> ApiError:
    return ApiError(400, "invalid_json", f"The request body nests objects and arrays more "
                    f"than {MAX_DEPTH} levels deep; flatten it.")


def _declared_body(length: int) -> bytes:
    """The ``length`` bytes its Content-Length declares, all of them: a client killed or
    cut off mid-upload ends its side of the connection early, and gunicorn hands the part
    that arrived over as the whole body (werkzeug's server raises ClientDisconnected).
    What arrived was taken for the body when it parsed: an event meant to carry 12345 woke
    its run with 12. Refused instead (400, the connection closed), so nothing is started
    or delivered, and the client, which got no answer, sends it again whole."""
    parts, got = [], 0
    try:
        while got < length:
            piece = request.stream.read(min(_READ, length - got))
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
    except (ClientDisconnected, OSError):  # the rest will not come either
        pass
    if got < length:
        raise ApiError(400, "bad_request", f"The request's body ended after {got} of its "
                       f"{length} bytes (Content-Length): the connection's sending side "
                       "closed before the whole body came; nothing was done with it, send "
                       "it again, whole.", headers={"Connection": "close"})
    return b"".join(parts)


def _shown(text: str) -> str:
    return text if len(text) <= 40 and text.isprintable() else text[:37] + "..."


def json_body() -> Any:
    """The request's JSON body ({} when empty); 400 when it is not JSON or is cut short of
    its Content-Length, 415 when it does not say it is JSON (an HTML form's body, which
    another site's page can send: origins.py)."""
    raw = g.get("flowkit_body")  # a chunked body, read whole by check_body_size
    if raw is None:
        length = request.content_length
        raw = request.get_data(cache=True) if length is None else _declared_body(length)
        g.flowkit_body = raw  # the stream is read: a second call reads it from here
    if not raw:
        return {}
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "Send the body as JSON with "
                       "'Content-Type: application/json' (it came as "
                       f"{request.mimetype or 'no Content-Type'}).")
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":  # gzip was read as plain text: "not valid JSON", said wrongly
        raise ApiError(415, "unsupported_media_type", f"A body sent with 'Content-Encoding: "
                       f"{_shown(encoding)}' is not read here: send it uncompressed, "
                       "without Content-Encoding.", headers={"Accept-Encoding": "identity"})
    try:
        value = strict_loads(raw)
    except RecursionError:  # nested past Python's own limit
        raise _too_deep() from None
    except ValueError as exc:
        if exc.args[:1] == (TOO_LARGE,):
            raise ApiError(400, "invalid_json", f"The request body holds {exc.args[1]}, a "
                           "number too large for a float; send it as a string.") from None
        if exc.args[:1] == (TOO_LONG,):
            raise ApiError(400, "invalid_json", f"The request body holds {exc.args[1]}; send "
                           "it as a string.") from None
        raise _not_json() from None
    if nested_too_deeply(value):
        raise _too_deep()
    try:
        json.dumps(value, ensure_ascii=False).encode()  # lone surrogates cannot be stored
    except UnicodeEncodeError:
        raise _not_json() from None
    return value


class ClosingConnections:
    """WSGI middleware: a response that says ``Connection: close`` (a body malformed, cut
    short, or too large to drain) has the server close the connection. gunicorn drops an
    application's ``Connection`` header as hop-by-hop and answered ``keep-alive``, then
    closed the connection all the same, or found the rest of the refused body where the
    next request should begin: the client's next request on it got no answer. gunicorn's
    ``start_response`` is its response's method, whose ``force_close()`` makes it close the
    connection and say ``Connection: close`` itself; other servers (Werkzeug's) take the
    header as it is."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if any(name.lower() == "connection" and value.lower() == "close"
                   for name, value in headers):
                force_close = getattr(getattr(start_response, "__self__", None),
                                      "force_close", None)
                if callable(force_close):
                    force_close()
            return start_response(status, headers, exc_info)

        return self.app(environ, start)
