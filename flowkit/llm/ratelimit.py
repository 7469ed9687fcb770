"""Shared rate limits: token buckets in Redis, one per provider and model, used by every worker.

One Lua script (``flowkit/store/lua/rate_acquire.lua``) refills both buckets (requests and tokens) from Redis's own
clock, and either takes the request's cost from both or answers how long to
wait, atomically: a burst of calls from many workers queues politely instead of
hitting 429s. Tokens are taken at an estimate before the call and settled with
the provider's usage count after it (given back whole when an attempt failed having
generated nothing: an error status or no connection).
"""

from __future__ import annotations

import asyncio
import random
import time

from ..context import is_cancelled, progress
from ..errors import RateLimitWait, RunCancelled
from ..store import Store, get_store
from .providers import RateLimit

WAITING_MESSAGE = "waiting for rate limit"
#: Re-announce a long wait this often, so a watcher sees the step is alive.
PROGRESS_EVERY = 5.0
#: Longest single sleep: budgets refill continuously, so check again soon.
MAX_NAP = 1.0


class RateLimiter:
    """Takes budget for calls to one provider's models; ``acquire`` blocks until it has it."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        return self._store or get_store()

    def try_acquire(self, provider: str, model: str, limit: RateLimit, tokens: int) -> float:
        """Take the budget and return 0, or return the seconds to wait before asking again."""
        budget = [
            (limit.rpm or 0) / 60, limit.request_capacity,
            (limit.tpm or 0) / 60, limit.token_capacity, tokens,
            120,  # an idle bucket is full again within a minute; let Redis forget it
        ]
        return self.store.take_rate(f"llm:{provider}:{model}", budget)
    def acquire(
        self, provider: str, model: str, limit: RateLimit, tokens: int, max_wait: float
    ) -> float:
        """Block until the call may go; returns seconds waited. Raises RateLimitWait after max_wait."""
        waiting = _Waiting(provider, model, limit, max_wait)
        while (nap := waiting.nap(self.try_acquire(provider, model, limit, tokens))) is not None:
            time.sleep(nap)
        return waiting.waited

    async def acquire_async(
        self, provider: str, model: str, limit: RateLimit, tokens: int, max_wait: float
    ) -> float:
        """:meth:`acquire` for async code: the waits are ``asyncio.sleep``."""
        waiting = _Waiting(provider, model, limit, max_wait)
        while (nap := waiting.nap(self.try_acquire(provider, model, limit, tokens))) is not None:
            await asyncio.sleep(nap)
        return waiting.waited

    def settle(self, provider: str, model: str, estimated: int, actual: int) -> None:
        """Give back (or take) the difference between the estimated and the real token count."""
        if estimated != actual:
            self.store.settle_rate(f"llm:{provider}:{model}", estimated - actual)


class _Waiting:
    """One caller's wait for budget: when to give up, announce itself, or stop."""

    def __init__(self, provider: str, model: str, limit: RateLimit, max_wait: float) -> None:
        self.what = f"{provider}/{model}"
        self.limit = limit
        self.max_wait = max_wait
        self.started = time.monotonic()
        self.announced = 0.0

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    def nap(self, wait: float) -> float | None:
        """None when the budget was taken (``wait`` 0); else how long to sleep first."""
        if wait == 0:
            return None
        waited = self.waited
        if waited + wait > self.max_wait:
            raise RateLimitWait(
                f"{self.what}: no rate-limit budget within {self.max_wait:g}s "
                f"(rpm={self.limit.rpm}, tpm={self.limit.tpm})"
            )
        if self.announced == 0.0 or waited - self.announced >= PROGRESS_EVERY:
            self.announced = max(waited, 1e-9)
            progress(WAITING_MESSAGE)
        if is_cancelled():
            raise RunCancelled("run stopped while waiting for rate-limit budget")
        # a little jitter so workers woken together do not collide on the same refill
        return min(MAX_NAP, wait) * random.uniform(1.0, 1.2)
