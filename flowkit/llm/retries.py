"""Which provider errors are worth retrying, and the tenacity policy that retries them.

Transient failures (connection errors, timeouts, 408, 409, 429, 5xx) are retried
with exponential backoff and full jitter, a provider's ``Retry-After`` winning
over the backoff. Anything else fails at once with the provider's message: a 400 or 422
(the request itself) at once; a 401, 403 or 404 (this provider's key, permissions or
model) and a 429 whose quota is spent after the other providers, whose accounts and model
names are their own, had the call (:func:`refused_here`). A ``Retry-After`` longer than
``LLM_MAX_RETRY_AFTER`` is not waited out: the provider counts as saturated and the
call fails over. The client marks what it gave up on as final
(:func:`flowkit.errors.mark_final`): a step's default retry does not send it again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai
import tenacity

from ..config import get_settings
from ..errors import ConfigError, RunCancelled, mark_final
from ..numbers import is_whole
from ..policy import retry_after_of, seconds, wait_retry_after

RETRYABLE_STATUS = frozenset({408, 409, 429})


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, RunCancelled) or is_out_of_quota(exc):
        return False
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    return False


#: Statuses that say no to this provider's account, not to the request: its key (401), its
#: permissions (403), or its model (404, a name the next provider maps to its own).
REFUSED_HERE_STATUS = frozenset({401, 403, 404})


def refused_here(exc: BaseException) -> bool:
    """An error no retry on this provider fixes but another provider may: a refused key or
    permission, a model it does not serve, a spent quota. A revoked key failed every call
    while a backup with its own key stood by."""
    return is_out_of_quota(exc) or (isinstance(exc, openai.APIStatusError)
                                    and exc.status_code in REFUSED_HERE_STATUS)


def is_out_of_quota(exc: BaseException) -> bool:
    """A 429 that is no rate limit: the account's quota is spent (``insufficient_quota``).
    Waiting does not help; another provider (another account) may."""
    return (isinstance(exc, openai.APIStatusError) and exc.status_code == 429
            and getattr(exc, "code", None) == "insufficient_quota")


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per provider, backoff bounds, and the longest ``Retry-After`` honoured."""

    attempts: int | None = None
    initial: float | None = None
    maximum: float | None = None
    max_retry_after: float | None = None

    def __post_init__(self) -> None:
        if self.attempts is not None and not (is_whole(self.attempts) and self.attempts >= 1):
            raise ConfigError(f"RetryPolicy(attempts=...) is a whole number >= 1, not "
                              f"{self.attempts!r}.")
        for name in ("initial", "maximum", "max_retry_after"):
            if getattr(self, name) is not None:
                seconds(getattr(self, name), f"RetryPolicy({name}=...)", zero=True)

    def resolved(self) -> RetryPolicy:
        s = get_settings()
        return RetryPolicy(
            attempts=self.attempts or s.llm_retry_attempts,
            initial=s.llm_retry_initial if self.initial is None else self.initial,
            maximum=s.llm_retry_maximum if self.maximum is None else self.maximum,
            max_retry_after=(
                s.llm_max_retry_after if self.max_retry_after is None else self.max_retry_after
            ),
        )

    def retrying(
        self, before_sleep: Callable[[tenacity.RetryCallState], Any] | None = None
    ) -> tenacity.Retrying:
        """The tenacity policy; without ``before_sleep``, one shared instance per policy
        (tenacity keeps each run's state thread- or greenlet-local), since building one
        per call cost as much as a Redis round trip."""
        if before_sleep is None:
            return _shared(self.resolved())
        return _build(self.resolved(), before_sleep)


@functools.lru_cache(maxsize=256)
def _shared(p: RetryPolicy) -> tenacity.Retrying:
    return _build(p, None)


def _build(
    p: RetryPolicy, before_sleep: Callable[[tenacity.RetryCallState], Any] | None
) -> tenacity.Retrying:
    def worth_another_try(exc: BaseException) -> bool:
        if not is_retryable(exc):
            return False
        hint = retry_after_of(exc)
        return hint is None or hint <= p.max_retry_after

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(p.attempts),
        wait=wait_retry_after(tenacity.wait_random_exponential(multiplier=p.initial, max=p.maximum)),
        retry=tenacity.retry_if_exception(worth_another_try),
        before_sleep=before_sleep,
        reraise=True,
    )


def explain_unwaited(exc: BaseException, policy: RetryPolicy) -> None:
    """Say in ``exc``'s message why it was not retried when its ``Retry-After`` was over
    the longest honoured: on the last provider it failed at once with the provider's bare
    "rate limit reached", as if flowkit had not tried. The SDK's type is kept (callers
    catch ``openai.RateLimitError``); only its message grows."""
    hint = retry_after_of(exc)
    cap = policy.resolved().max_retry_after
    if (not isinstance(exc, openai.APIError) or not is_retryable(exc) or hint is None
            or cap is None or hint <= cap or getattr(exc, "_flowkit_explained", False)):
        return
    why = (f" (flowkit: not retried, as its Retry-After, {hint:g}s, is over the longest "
           f"waited out, {cap:g}s: RetryPolicy(max_retry_after=...) or "
           "FLOWKIT_LLM_MAX_RETRY_AFTER; or give the client another provider to fail over to)")
    exc.message = f"{exc.message}{why}"
    exc.args = (f"{exc.args[0]}{why}" if exc.args else exc.message, *exc.args[1:])
    exc._flowkit_explained = True  # type: ignore[attr-defined]
    mark_final(exc, "its Retry-After is over the longest waited out")
