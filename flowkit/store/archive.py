"""A finished run's events and trace, compacted into one Redis string.

A run keeps its whole history readable for its retention, but a finished run is read
rarely and never written (unless retried): ``compact.lua`` replaces its two streams with
one zlib-compressed JSON document, a few times smaller (the README's sizing). Every read of
events and spans goes through :class:`flowkit.store.Store`, which reads the archive first
and then the streams (a retried run writes to a new stream after its archive), so callers
never see the difference. No I/O here: packing and reading the document only.

Layout: ``{"v": 1, "events": [[stream id, event JSON], ...], "spans": [span JSON, ...]}``.
"""

from __future__ import annotations

import json
import zlib

from .streams import Entry

VERSION = 1


def pack(events: list[Entry], spans: list[str]) -> bytes:
    doc = {"v": VERSION, "events": [list(e) for e in events], "spans": spans}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)


def unpack(blob: bytes | None) -> tuple[list[Entry], list[str]]:
    """(events, spans) of an archive; both empty for none."""
    if not blob:
        return [], []
    doc = json.loads(zlib.decompress(blob))
    return [(entry_id, event) for entry_id, event in doc["events"]], doc["spans"]


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def after(events: list[Entry], cursor: str) -> list[Entry]:
    """The archived events after ``cursor`` (a stream id, exclusive; ``0`` for all)."""
    start = _order(cursor)
    return [e for e in events if _order(e[0]) > start]
