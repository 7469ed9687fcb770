"""Shared rate limits: token buckets in Redis, one per provider and model, used by every worker.

One Lua script refills both buckets (requests and tokens) from Redis's own
clock, and either takes the request's cost from both or answers how long to
wait, atomically: a burst of calls from many workers queues politely instead of
hitting 429s. Tokens are taken at an estimate before the call and settled with
the provider's usage count after it.
"""

from __future__ import annotations

import random
import time
import weakref

from ..context import is_cancelled, progress
from ..errors import RunCancelled
from ..store import Store, get_store
from .providers import RateLimit

WAITING_MESSAGE = "waiting for rate limit"
#: Re-announce a long wait this often, so a watcher sees the step is alive.
PROGRESS_EVERY = 5.0
#: Longest single sleep: budgets refill continuously, so check again soon.
MAX_NAP = 1.0

# KEYS[1]: the bucket hash. ARGV: req_rate, req_cap, tok_rate, tok_cap, tok_cost, ttl
# A rate of 0 means no such budget. Returns 0 (taken) or the milliseconds to wait.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function level(name, rate, cap)
  local stored = redis.call('HMGET', KEYS[1], name, name .. '_at')
  local lvl = tonumber(stored[1]) or cap
  local at = tonumber(stored[2]) or now
  return math.min(cap, lvl + math.max(0, now - at) * rate)
end
local req_rate, req_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local tok_rate, tok_cap, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local wait = 0
local req, tok
if req_rate > 0 then
  req = level('req', req_rate, req_cap)
  if req < 1 then wait = math.max(wait, (1 - req) / req_rate) end
end
if tok_rate > 0 then
  tok = level('tok', tok_rate, tok_cap)
  local need = math.min(cost, tok_cap)  -- a request larger than the bucket waits for a full one
  if tok < need then wait = math.max(wait, (need - tok) / tok_rate) end
end
if wait > 0 then return math.ceil(wait * 1000) end
if req then redis.call('HSET', KEYS[1], 'req', req - 1, 'req_at', now) end
if tok then redis.call('HSET', KEYS[1], 'tok', tok - cost, 'tok_at', now) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 0
"""

# KEYS[1]: the bucket hash. ARGV: tokens to give back (negative: to take). A bucket
# Redis forgot is full again: nothing to settle.
_SETTLE = """
if redis.call('HEXISTS', KEYS[1], 'tok') == 1 then
  redis.call('HINCRBYFLOAT', KEYS[1], 'tok', ARGV[1])
end
return 0
"""

_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _registered(store: Store) -> dict:
    scripts = _scripts.get(store)
    if scripts is None:
        scripts = {"acquire": store.redis.register_script(_ACQUIRE),
                   "settle": store.redis.register_script(_SETTLE)}
        _scripts[store] = scripts
    return scripts


class RateLimiter:
    """Takes budget for calls to one provider's models; ``acquire`` blocks until it has it."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        return self._store or get_store()

    def try_acquire(self, provider: str, model: str, limit: RateLimit, tokens: int) -> float:
        """Take the budget and return 0, or return the seconds to wait before asking again."""
        args = [
            (limit.rpm or 0) / 60, limit.request_capacity,
            (limit.tpm or 0) / 60, limit.token_capacity, tokens,
            120,  # an idle bucket is full again within a minute; let Redis forget it
        ]
        store = self.store
        waited_ms = _registered(store)["acquire"](keys=[store.keys.llm_rate(provider, model)], args=args)
        return int(waited_ms) / 1000

    def acquire(
        self, provider: str, model: str, limit: RateLimit, tokens: int, max_wait: float
    ) -> float:
        """Block until the call may go; returns seconds waited. Raises RateLimitWait after max_wait."""
        started = time.monotonic()
        announced = 0.0
        while True:
            wait = self.try_acquire(provider, model, limit, tokens)
            if wait == 0:
                return time.monotonic() - started
            waited = time.monotonic() - started
            if waited + wait > max_wait:
                raise RateLimitWait(
                    f"{provider}/{model}: no rate-limit budget within {max_wait:g}s "
                    f"(rpm={limit.rpm}, tpm={limit.tpm})"
                )
            if announced == 0.0 or waited - announced >= PROGRESS_EVERY:
                announced = max(waited, 1e-9)
                progress(WAITING_MESSAGE)
            if is_cancelled():
                raise RunCancelled("run stopped while waiting for rate-limit budget")
            # a little jitter so workers woken together do not collide on the same refill
            time.sleep(min(MAX_NAP, wait) * random.uniform(1.0, 1.2))

    def settle(self, provider: str, model: str, estimated: int, actual: int) -> None:
        """Give back (or take) the difference between the estimated and the real token count."""
        if estimated != actual:
            store = self.store
            _registered(store)["settle"](
                keys=[store.keys.llm_rate(provider, model)], args=[estimated - actual]
            )


class RateLimitWait(Exception):
    """The shared budget did not free up in time; the caller fails over to the next provider."""
