"""Reading a request: query strings through marshmallow, the JSON body, content negotiation."""

from __future__ import annotations

import re
from typing import Any

import marshmallow
from flask import g, request
from werkzeug.exceptions import HTTPException

from .auth import Access
from .errors import ApiError
from .state import state
from .streaming import NDJSON, SSE

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9.]+)", re.IGNORECASE)


def access() -> Access:
    """What the caller of this request may do (set before every non-public view)."""
    return g.flowkit_access


def query(schema: type[marshmallow.Schema]) -> dict[str, Any]:
    try:
        return schema().load(request.args.to_dict(), unknown=marshmallow.EXCLUDE)
    except marshmallow.ValidationError as exc:
        raise ApiError(400, "validation_error", "Invalid query parameters.", exc.messages) from None


def negotiated_stream() -> str | None:
    """SSE or NDJSON when the client names one explicitly (``*/*`` means JSON)."""
    accept = request.accept_mimetypes
    for kind in (SSE, NDJSON):
        if any(value == kind and quality > 0 for value, quality in accept):
            return kind if accept.quality(kind) >= accept.quality("application/json") else None
    return None


def wait_seconds(query_wait: float | None) -> float | None:
    """How long a start may hold the request: ``?wait=`` or ``Prefer: wait=``, capped."""
    wait = query_wait
    if wait is None:
        found = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
        if found:
            try:
                wait = float(found.group(1))
            except ValueError:
                raise ApiError(400, "validation_error", "Invalid Prefer: wait=.",
                               {"Prefer": ["wait must be a number of seconds."]}) from None
    return None if wait is None else min(wait, state().options.max_wait)


def json_body() -> Any:
    """The request's JSON body ({} when empty); 400 when it is not JSON."""
    if not request.get_data(cache=True):
        return {}
    try:
        return request.get_json(force=True)
    except HTTPException as exc:
        if exc.code == 413:
            raise
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
