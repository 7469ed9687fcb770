"""Following a run on Redis from the command line (``flowkit follow``, ``flowkit events
-f``) through Redis restarts: a deploy or a crash of Redis (AOF on) ended the follow within
the CLI's 2 s of retries, exit 1, while the run went on. The follow says so once on stderr,
and goes on from the last event shown when Redis is back; it gives up after two minutes
away, as a follow over ``--url`` does (:mod:`.remote`).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..config import get_settings
from ..engine import control
from ..errors import FlowkitError, StoreUnavailable
from ..urls import reached
from .remote import RECONNECT_SECONDS, RECONNECT_TRIES


def followed_locally(run_id: str, after: str) -> Iterator[dict[str, Any]]:
    """The run's events after ``after`` until it ends, each ``{"id", **data}``. A cursor
    past the run's last event is refused here, at once (ValidationError)."""
    try:
        followed = control.follow(run_id, after)
    except StoreUnavailable:  # gone since the start (or the run's read): waited out as
        followed = None  # any outage, or `flowkit run` said no run id, only "cannot reach"
    return _through_outages(run_id, after, followed)


def _through_outages(run_id: str, cursor: str, followed: Iterator[Any] | None
                     ) -> Iterator[dict[str, Any]]:
    away_since: float | None = None
    while True:
        try:
            if followed is None:
                followed = control.follow(run_id, cursor)
                if away_since is not None:
                    print(f"flowkit: Redis answers again; following run {run_id}.",
                          file=sys.stderr, flush=True)
                away_since = None
            for event in followed:
                cursor = event.id
                yield {"id": event.id, **event.data}
            return
        except StoreUnavailable as exc:
            followed, now = None, time.monotonic()
            if away_since is None:  # once per outage: it was silent until it gave up
                away_since = now
                print(f"flowkit: cannot reach Redis at {reached(get_settings().redis_url)} "
                      f"({exc}); following run {run_id} goes on from event {cursor} once "
                      "it is back (nothing is lost) ...", file=sys.stderr, flush=True)
            elif now - away_since > RECONNECT_TRIES * RECONNECT_SECONDS:
                raise FlowkitError(
                    f"Redis at {reached(get_settings().redis_url)} has been away for two "
                    f"minutes ({exc}); follow run {run_id} again once it is back: "
                    f"flowkit follow {run_id} --after {cursor}") from None
        time.sleep(RECONNECT_SECONDS)




#: Seconds without an event after which a follow asks why the run does not move.
QUIET_SECONDS = 3.0


class StallWatch:
    """Tells a follow why its run does not move, once per reason: a run no worker takes
    (no live worker, or none on its queue), or a step whose worker stopped beating. Such a
    run sends no event, and ``flowkit run``/``follow`` showed "queued" for ever while
    ``flowkit status`` and the API's ``waiting_for`` said to start a worker. After
    ``quiet`` seconds without an event it reads the run (``get``) and calls ``tell`` with
    its state and ``waiting_for`` when the reason is new, by its words (``lapsed 41s ago``
    and ``lapsed 44s ago`` are one reason: each read printed it again), and with ``""``
    once it is gone; it reads again after another quiet spell. An event makes the next
    reason new again."""

    def __init__(self, get: Callable[[], dict[str, Any]],
                 tell: Callable[[str, str], None], quiet: float = QUIET_SECONDS) -> None:
        self._get, self._tell, self._quiet = get, tell, quiet
        self._last = time.monotonic()
        self._told = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="flowkit-stall-watch",
                                        daemon=True)

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def seen(self) -> None:
        """An event came: the run moves."""
        self._last = time.monotonic()
        self._told = ""

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self._quiet)):
            if time.monotonic() - self._last < self._quiet:
                continue
            self._last = time.monotonic()
            try:
                record = self._get()
            except Exception:  # noqa: BLE001 - an outage the follow itself says
                continue
            why = record.get("waiting_for") or ""
            # a reason by its words, not its numbers: "lapsed 41s ago" is not new at 44s
            reason = re.sub(r"[0-9.]+", "#", why)
            if reason != self._told and not self._stop.is_set():
                self._told = reason
                self._tell(str(record.get("state") or ""), why)
