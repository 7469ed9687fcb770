"""How many streams one caller may hold open in a web process.

A stream (SSE, NDJSON, a WebSocket, a start's ``?wait=``) holds one of the process's
threads for as long as it is open. Without a bound, a run token handed to a browser, or
an owner-scoped caller, could open as many as the process has threads and leave every
other caller, of every tenant, unanswered. Callers with full access (an API key, open
mode, ``authorize`` returning True) are not counted: they are the operator's own.

The count is per process: a deployment of N web processes lets a caller hold N times the
limit, still a bound (FLOWKIT_API_STREAMS_PER_CALLER; 0 turns it off).
"""

from __future__ import annotations

import threading

from .errors import ApiError

#: What a refusal asks the client to wait before it tries again (seconds).
RETRY_AFTER = 5


class StreamQuota:
    """Streams open per holder (``run:<id>`` for a run token, ``owner:<tag>``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, holder: str | None) -> None:
        """Count one more stream of ``holder``; 429 ``too_many_streams`` at the limit."""
        if holder is None or not self.limit:
            return
        with self._lock:
            held = self._held.get(holder, 0)
            if held < self.limit:
                self._held[holder] = held + 1
                return
        raise refusal(holder, self.limit)

    def check(self, holder: str | None) -> None:
        """Refuse as :meth:`acquire` would, counting nothing (a WebSocket's handshake:
        a refusal there is a plain HTTP answer; its stream acquires once upgraded)."""
        if holder is not None and self.limit and self.held(holder) >= self.limit:
            raise refusal(holder, self.limit)

    def release(self, holder: str | None) -> None:
        if holder is None or not self.limit:
            return
        with self._lock:
            held = self._held.get(holder, 0) - 1
            if held > 0:
                self._held[holder] = held
            else:
                self._held.pop(holder, None)

    def held(self, holder: str) -> int:
        with self._lock:
            return self._held.get(holder, 0)


def refusal(holder: str, limit: int) -> ApiError:
    who = "This run's tokens already hold" if holder.startswith("run:") else \
        "This caller already holds"
    return ApiError(429, "too_many_streams",
                    f"{who} {limit} streams open on this server "
                    "(FLOWKIT_API_STREAMS_PER_CALLER): close one (a page open in another "
                    f"tab?) and try again in {RETRY_AFTER}s.",
                    headers={"Retry-After": str(RETRY_AFTER)})
