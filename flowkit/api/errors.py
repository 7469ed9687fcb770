"""One JSON error shape for every error the API answers: ``{"error": {code, message, fields}}``.

flowkit's exceptions map to their status here, werkzeug's HTTP exceptions (404, 405,
413, ...) keep theirs, and anything unexpected becomes a 500 without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from ..errors import (
    BrokerUnavailable,
    ConfigError,
    FlowkitError,
    IdempotencyConflict,
    InvalidState,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
    ValidationError,
)

log = logging.getLogger(__name__)


class ApiError(FlowkitError):
    """An error answered as-is: ``status``, a stable ``code`` and a message for people."""

    def __init__(
        self, status: int, code: str, message: str, fields: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}


#: Field messages an error lists at most: a body of 90,000 unknown fields was answered with
#: a 2.5 MB list of them (an answer bigger than its request, for anyone to ask for).
MAX_FIELD_MESSAGES = 50


def error_response(
    status: int, code: str, message: str, fields: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    fields = fields or {}
    if len(fields) > MAX_FIELD_MESSAGES:
        more = len(fields) - MAX_FIELD_MESSAGES
        fields = {name: fields[name] for name in sorted(fields, key=str)[:MAX_FIELD_MESSAGES]}
        fields["_more"] = [f"{more} more fields have errors: fix these, and send it again."]
    response = jsonify({"error": {"code": code, "message": message, "fields": fields}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


#: Codes that flowkit's own errors also use, so one status has one code.
_CODES = {413: "payload_too_large"}


def _code(exc: HTTPException) -> str:
    if exc.code in _CODES:
        return _CODES[exc.code]
    return (exc.name or "error").lower().replace(" ", "_").replace("'", "")


#: flowkit's errors that the host app's own views meet when they call flowkit (``start()``
#: with a user's bad input, ``get_run()`` of an unknown id), answered as the API answers them.
HOST_ERRORS = (ValidationError, NotFound, IdempotencyConflict, InvalidState, PayloadTooLarge,
               StoreUnavailable)


def handle_host_errors(app: Flask) -> None:
    """Answer :data:`HOST_ERRORS` raised in the host app's own views with their 4xx/503 and
    the API's JSON shape (``start()`` in a route of the app's, given a user's bad input, was a
    500), unless the app handles them itself: a handler it registered before for the class
    (or a flowkit error above it) is left in place, and one it has for any class above it
    when the error comes (``@app.errorhandler(Exception)``: its error page, its error
    reporting), registered before or after, is the one called, as without flowkit."""
    own = tuple(app.error_handler_spec.get(None, {}).get(None, {}))
    for error in HOST_ERRORS:
        if not any(issubclass(error, cls) and issubclass(cls, FlowkitError) for cls in own):
            app.register_error_handler(error, _host_error)


def _host_error(exc: BaseException) -> Any:
    theirs = _their_handler(exc)
    if theirs is not None:
        return theirs(exc)
    if _their_500_page():  # unhandled, it reached the app's 500 page: it still does
        raise exc
    return to_response(exc)


def _their_handler(exc: BaseException) -> Any:
    """The handler Flask would have picked for ``exc`` without :func:`_host_error`: the
    nearest class of its MRO with another handler, the request's blueprints first."""
    for cls in type(exc).__mro__:
        for scope in _scopes():
            handler = current_app.error_handler_spec.get(scope, {}).get(None, {}).get(cls)
            if handler is not None and handler is not _host_error:
                return handler
    return None


def _their_500_page() -> bool:
    """Whether the app (or a blueprint of the request) has a handler for a 500."""
    return any(current_app.error_handler_spec.get(scope, {}).get(500) for scope in _scopes())


def _scopes() -> list[str | None]:
    """Where Flask looks for a handler, in its order: the request's blueprints, then the app."""
    return [*request.blueprints, None] if has_request_context() else [None]


def to_response(exc: BaseException) -> Response:
    """The JSON error response for ``exc`` (any exception)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers)
    if isinstance(exc, ValidationError):
        return error_response(400, "validation_error", exc.message, exc.fields)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, IdempotencyConflict):
        return error_response(409, "idempotency_conflict", str(exc))
    if isinstance(exc, InvalidState):
        return error_response(409, "invalid_state", str(exc))
    if isinstance(exc, PayloadTooLarge):
        return error_response(413, "payload_too_large", str(exc))
    if isinstance(exc, BrokerUnavailable):
        log.warning("flowkit API: broker unavailable: %s", exc)
        stored = (f" Run {exc.run_id} is stored: the reaper sends it once the broker is "
                  "back; do not start it again." if exc.run_id else "")
        if exc.refused:  # a setting to fix: retrying would not help (no Retry-After)
            return error_response(503, "broker_refused", "flowkit's Celery broker refused "
                                  "this server (its credentials, vhost or queue settings): "
                                  f"the operator must fix FLOWKIT_BROKER_URL.{stored}")
        return error_response(503, "broker_unavailable",
                              f"flowkit's Celery broker is unavailable; retry shortly.{stored}",
                              None, {"Retry-After": "2"})
    if isinstance(exc, StoreUnavailable):
        log.warning("flowkit API: Redis unavailable: %s", exc)
        return error_response(503, "store_unavailable",
                              "flowkit's Redis is unavailable; retry shortly.", None,
                              {"Retry-After": "2"})
    if isinstance(exc, ConfigError):
        # a setting no retry fixes, met while serving (Redis refusing a rotated password,
        # a Cluster store with no broker of its own): it was a 500 with a traceback
        log.error("flowkit API: misconfigured: %s", exc)
        return error_response(503, "misconfigured", "flowkit is misconfigured on this server: "
                              "its operator must fix a setting, which the server's log names.")
    if isinstance(exc, HTTPException):
        headers = {}
        if exc.code == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(exc.valid_methods)
        return error_response(exc.code or 500, _code(exc), exc.description or exc.name, None, headers)
    log.exception("flowkit API: unexpected error", exc_info=exc)
    return error_response(500, "internal_error", "The server failed to handle this request.")
