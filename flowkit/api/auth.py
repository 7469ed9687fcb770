"""Who may call the API: API keys, a host-app callback, run-scoped tokens, or nobody.

Credentials are required unless the host app sets ``FLOWKIT_API_OPEN`` on purpose.
In order, a request is let in by:

1. ``Authorization: Bearer <key>`` with one of ``FLOWKIT_API_KEYS``: everything;
2. a run-scoped token (bearer, or ``?token=`` because browsers' ``EventSource`` and
   ``WebSocket`` cannot send headers): signed and expiring, it reads one run's
   record, output, events and stream, and nothing else; a stream it opened ends when
   it expires (:attr:`Access.expires_at`), as its next request would be refused;
3. the host app's ``authorize(request)`` callback: ``True`` for everything, or an
   owner string that scopes the caller to the runs it started (it may start runs, list
   and read its own; schedules, ``POST /events``, workers and metrics reach across
   owners and answer it 403). Any other truthy answer (``1``, a user object) is refused
   and logged: only ``True`` grants everything;
4. ``FLOWKIT_API_OPEN``: everything, without credentials (local development), to
   requests for a loopback host name only (``localhost``, ``127.0.0.1``, ``[::1]``, or
   the host of a ``FLOWKIT_API_TRUSTED_ORIGINS`` origin): another site's page could reach
   a local server under its own name through DNS rebinding.

A request none of them lets in gets ``401`` (code ``unauthorized``) with a message for
the auth in use:

- API keys only: ``Credentials required: send 'Authorization: Bearer <API key>'.``;
  without any key, to send a run token, adding that this server has no API keys (set
  FLOWKIT_API_KEYS to use them); or ``Invalid API key or run token.`` when a bearer or ``?token=`` was sent;
- an ``authorize`` callback: ``The host app's authorization refused this request.``;
  with API keys too, it adds ``an API key also works: send 'Authorization: Bearer <API
  key>'``; when a bearer or ``?token=`` was sent, it adds that the token is not a valid
  run token (nor API key, with keys);
- an expired run token, whatever the mode: ``This run token has expired.`` (code
  ``token_expired``).

To answer with its own status, code and message (a sign-in URL, a 403 for a known caller
who may not use the API), the callback raises :class:`flowkit.api.errors.ApiError`, e.g.
``raise ApiError(401, "login_required", "Sign in at /login first.")``; flowkit answers it
as-is, adding ``WWW-Authenticate`` to a 401 that has none. A falsy return gets the
message above.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from dataclasses import dataclass

from flask import Request
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .errors import ApiError
from .options import ApiOptions
from .origins import check_open_host

log = logging.getLogger(__name__)

KEY, APP, OPEN, RUN = "key", "app", "open", "run"
#: The error code of an expired run token, and what a stream it opened says as it ends.
TOKEN_EXPIRED = "token_expired"
STREAM_EXPIRED = "This run token has expired: reconnect with a fresh one and your last event id."
_TOKEN_SALT = "flowkit.run-token"


@dataclass(frozen=True)
class Access:
    """What the caller of this request may do."""

    kind: str
    #: The one run a run-scoped token may read.
    run_id: str | None = None
    #: Owner/tenant tag given by the authorize callback: the caller sees only its runs.
    owner: str | None = None
    #: A run token's end (``time.time()``): the first instant it is refused. A stream it
    #: opened ends then, so that a token stops reading when it expires, not when its
    #: connection happens to drop.
    expires_at: float | None = None

    @property
    def full(self) -> bool:
        """Everything: an API key, ``authorize`` returning True, or open mode."""
        return self.kind in (KEY, OPEN) or (self.kind == APP and self.owner is None)

    @property
    def stream_holder(self) -> str | None:
        """Whose streams these are for the web process's quota (flowkit.api.quota): a run
        token's run, an owner-scoped caller's owner; None for full access (not counted)."""
        if self.kind == RUN:
            return f"run:{self.run_id}"
        return None if self.full else f"owner:{self.owner}"

    def require_caller(self) -> None:
        """Endpoints beyond one run's reads that an owner-scoped caller may use too (start
        runs, list its runs, the served workflows); a run token may not."""
        if self.kind == RUN:
            raise ApiError(403, "forbidden", "A run token only reads its own run.")

    def require_full(self, why: str) -> None:
        """Endpoints that reach across owners (schedules, events sent to every waiting run,
        workers, metrics): neither a run token nor an owner-scoped caller. ``why``: what
        makes them so, the start of the 403's message."""
        if not self.full:
            raise ApiError(403, "forbidden", f"{why}: use an API key, or an authorization "
                           "that is not scoped to an owner.")

    def require_run(self, run_id: str, write: bool = False, answer: bool = False) -> None:
        """A run token's scope: reads of its own run; ``write``: changing it (cancel,
        retry), which it may not; ``answer``: sending input to its waits, which it may (a
        page answering its form). Checked before the run is looked up, so that its 403 is
        the same whether another id exists or not."""
        if self.kind == RUN:
            if run_id != self.run_id:
                raise ApiError(403, "forbidden", "This token is for another run: a run token "
                               "reads its own run only.")
            if write and not answer:  # one message for both hid which one it was
                raise ApiError(403, "forbidden", "A run token reads its run and answers its "
                               "waits; cancelling or retrying it needs an API key (or your "
                               "app's own authorization).")

    def sees(self, run_owner: str) -> bool:
        """Whether a run of ``run_owner`` is this caller's to see: an owner-scoped caller
        sees only its own; to it another owner's run is not found, as a missing one is
        (a 403 told which run ids of other tenants exist)."""
        return self.kind == RUN or self.owner is None or run_owner == self.owner


_CHALLENGE = 'Bearer realm="flowkit"'
_SEND_KEY = "send 'Authorization: Bearer <API key>'"
_SEND_TOKEN = "send a run token ('Authorization: Bearer <run token>' or '?token=<run token>')"


def _unauthorized(message: str, code: str = "unauthorized") -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": _CHALLENGE})


class Authenticator:
    def __init__(self, options: ApiOptions, app_secret: str | None) -> None:
        self.options = options
        # tokens signed with a secret of this process alone: the first one made says so
        self._warn_on_issue = not (options.secret or app_secret or options.keys or options.open)
        self.tokens = URLSafeTimedSerializer(self._secret(options, app_secret), salt=_TOKEN_SALT)

    @staticmethod
    def _secret(options: ApiOptions, app_secret: str | None) -> str:
        if options.secret or app_secret:
            return options.secret or str(app_secret)
        if options.keys:  # every process sharing these keys can verify each other's tokens
            return hashlib.sha256("\n".join(sorted(options.keys)).encode()).hexdigest()
        return secrets.token_hex(32)

    def issue(self, run_id: str) -> str:
        if self._warn_on_issue:
            # said when a token is made, not when the app is built: a worker or the CLI
            # importing the app's package makes none, and has nothing to be told
            self._warn_on_issue = False
            log.warning(
                "flowkit API: no FLOWKIT_API_SECRET, SECRET_KEY or API keys: run tokens are "
                "signed with a random secret and only verify in this process; set "
                "FLOWKIT_API_SECRET where the app runs."
            )
        return self.tokens.dumps({"run": run_id})

    def _run_of(self, token: str) -> tuple[str | None, float]:
        """The run a token reads and when it expires; no run for a token that is not one."""
        try:
            data, signed = self.tokens.loads(
                token, max_age=self.options.token_ttl, return_timestamp=True)
        except SignatureExpired:
            raise _unauthorized("This run token has expired.", TOKEN_EXPIRED) from None
        except BadSignature:
            return None, 0.0
        # itsdangerous refuses a whole-second age above max_age: from ttl's whole seconds + 1.
        expires_at = signed.timestamp() + math.floor(self.options.token_ttl) + 1
        return (data.get("run") if isinstance(data, dict) else None), expires_at

    def _is_key(self, bearer: str) -> bool:
        given = bearer.encode()
        return any(hmac.compare_digest(given, key.encode()) for key in self.options.keys)

    def authenticate(self, request: Request) -> Access:
        bearer = _bearer(request)
        if bearer and self._is_key(bearer):
            return Access(KEY)
        token = bearer or request.args.get("token")
        if token:
            run_id, expires_at = self._run_of(token)
            if run_id:
                return Access(RUN, run_id=run_id, expires_at=expires_at)
        if self.options.authorize is not None:
            granted = self._ask_host_app(request)
            if granted is True:
                return Access(APP)
            if isinstance(granted, str) and granted:
                return Access(APP, owner=granted)
            if granted:  # an answer it does not define grants nothing (fails closed)
                log.error("flowkit API: the authorize callback returned a value of type "
                          "%s; it must return True (everything), an owner string, or a "
                          "falsy value (refused): it grants nothing.", type(granted).__name__)
        if self.options.open:
            check_open_host(request, self.options.trusted_origins)
            return Access(OPEN)
        raise self._refusal(sent_token=bool(token))

    def _ask_host_app(self, request: Request) -> object:
        """The authorize callback's answer; an ApiError it raises is the answer as-is
        (a 401 gets the ``WWW-Authenticate`` challenge HTTP requires if it has none)."""
        try:
            return self.options.authorize(request)
        except ApiError as refused:
            if refused.status == 401:
                refused.headers.setdefault("WWW-Authenticate", _CHALLENGE)
            raise

    def _refusal(self, sent_token: bool) -> ApiError:
        """The 401 for a request nothing let in, worded for the auth configured."""
        if self.options.authorize is None:
            if sent_token:
                return _unauthorized("Invalid API key or run token.")
            if not self.options.keys:  # run tokens only: by design, or a deploy that forgot
                return _unauthorized(f"Credentials required: {_SEND_TOKEN}; this server has "
                                     "no API keys (set FLOWKIT_API_KEYS where it runs to use "
                                     "them).")
            return _unauthorized(f"Credentials required: {_SEND_KEY}.")
        refused = "The host app's authorization refused this request"
        if sent_token:
            token = "API key or run token" if self.options.keys else "run token"
            return _unauthorized(f"{refused}, and the token sent is not a valid {token}.")
        if self.options.keys:
            return _unauthorized(f"{refused}; an API key also works: {_SEND_KEY}.")
        return _unauthorized(f"{refused}.")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None
