"""Following a run on Redis from the command line (``flowkit follow``, ``flowkit events
-f``) through Redis restarts: a deploy or a crash of Redis (AOF on) ended the follow within
the CLI's 2 s of retries, exit 1, while the run went on. The follow says so once on stderr,
and goes on from the last event shown when Redis is back; it gives up after two minutes
away, as a follow over ``--url`` does (:mod:`.remote`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
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


