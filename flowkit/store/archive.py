"""A finished run's events and trace, compacted into one Redis string.

A run keeps its whole history readable for its retention, but a finished run is read
rarely and never written (unless retried): ``compact.lua`` replaces its two streams with
one zlib-compressed JSON document, a few times smaller (the README's sizing). Every read of
events and spans goes through :class:`flowkit.store.Store`, which reads the archive first
and then the streams (a retried run writes to a new stream after its archive), so callers
never see the difference. No I/O here: packing and reading the document only.

Layout: ``{"v": 1, "events": [[stream id, event JSON], ...], "spans": [span JSON, ...]}``.

A follower reads a long run's history in pages (500 events): each page GETs the archive
again, and unpacking all of it for each page made reading a compacted run quadratic (20,000
events took 2 s, 35 times an ``XRANGE`` of them). The last few long archives read are
kept unpacked, keyed by their bytes (an archive rewritten by a retried run's compaction is
other bytes), with their events' order for a binary search (``bench/history_read.py``).
Only archives of more than a page are kept (a list of a hundred short runs, the
dashboard's, would push out the long one a follower pages through), and only so many bytes
of them: each process holds at most KEPT_BYTES of compressed archives, a few times that
unpacked.
"""

from __future__ import annotations

import bisect
import json
import zlib
from collections import OrderedDict
from typing import NamedTuple

from ..locks import ForkSafeLock
from .streams import Entry

VERSION = 1


def pack(events: list[Entry], spans: list[str]) -> bytes:
    doc = {"v": VERSION, "events": [list(e) for e in events], "spans": spans}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)


class _Unpacked(NamedTuple):
    events: tuple[Entry, ...]
    spans: tuple[str, ...]
    orders: tuple[tuple[int, int], ...]  # each event's id as numbers, ascending


#: Archives kept unpacked per process (a server's followers of a few long runs at once),
#: and the most compressed bytes they may hold together.
KEPT = 8
KEPT_BYTES = 16 * 1024 * 1024
#: Smallest archive kept: about two pages of events (1,000 token chunks), below which
#: unpacking it for each page costs little.
KEPT_FROM_BYTES = 8 * 1024

_kept: OrderedDict[bytes, _Unpacked] = OrderedDict()
_kept_lock = ForkSafeLock()


def _read(blob: bytes) -> _Unpacked:
    doc = json.loads(zlib.decompress(blob))
    events = tuple((entry_id, event) for entry_id, event in doc["events"])
    return _Unpacked(events, tuple(doc["spans"]), tuple(_order(e[0]) for e in events))


def _unpacked(blob: bytes) -> _Unpacked:
    """The archive unpacked: the kept copy of a long one, else read now."""
    if not KEPT_FROM_BYTES <= len(blob) <= KEPT_BYTES:
        return _read(blob)
    with _kept_lock:
        found = _kept.get(blob)
        if found is not None:
            _kept.move_to_end(blob)
            return found
    found = _read(blob)  # outside the lock: another reader's page need not wait on it
    with _kept_lock:
        _kept[blob] = found
        while len(_kept) > KEPT or sum(map(len, _kept)) > KEPT_BYTES:
            _kept.popitem(last=False)
    return found


def unpack(blob: bytes | None) -> tuple[list[Entry], list[str]]:
    """(events, spans) of an archive, lists of the caller's own; both empty for none."""
    if not blob:
        return [], []
    found = _unpacked(blob)
    return list(found.events), list(found.spans)


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def events_after(blob: bytes | None, cursor: str, count: int | None = None) -> list[Entry]:
    """The archive's events after ``cursor`` (a stream id, exclusive; ``0`` for all), at
    most ``count`` of them."""
    if not blob:
        return []
    found = _unpacked(blob)
    start = bisect.bisect_right(found.orders, _order(cursor))
    end = len(found.events) if count is None else start + count
    return list(found.events[start:end])
