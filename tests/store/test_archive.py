"""compact.lua and the store's reads of a compacted run: a finished run's events and trace
move into one archive, and every read answers as before."""

from __future__ import annotations

import pytest

from flowkit.events import cursor_order
from flowkit.states import RunState
from flowkit.store import archive
from flowkit.store.keys import shard_of
from tests.store.test_transitions import RUN, T, complete, fail, finish, make_run


def spans(store, n: int = 3) -> list[str]:
    docs = [f'{{"id":"step:{i}","status":"ok"}}' for i in range(n)]
    store.append_trace([(RUN, doc) for doc in docs])
    return docs


def reads(store) -> tuple:
    """Everything a reader can ask of the run's history."""
    everything = store.history(RUN, "0-0")
    middle = everything[1][0]
    return (everything, store.history(RUN, middle), store.history(RUN, "0-0", 2),
            store.read_new(RUN, middle, block_ms=1), store.last_event(RUN), store.read_trace(RUN))


@pytest.mark.parametrize("state", [RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED])
def test_compacting_a_finished_run_keeps_every_read_the_same(store, state):
    make_run(store, state)
    spans(store)
    before = reads(store)
    assert store.ended_before(T + 2, 10) == [RUN]
    assert store.compact(RUN) is True
    assert store.redis.exists(store.keys.trace(RUN)) == 0
    assert store.redis.xlen(store.keys.events(RUN)) == 0  # kept empty, for its last id
    assert reads(store) == before
    assert store.ended_before(T + 2, 10) == []  # out of the index
    kept, run_kept = store.redis.pttl(store.keys.archive(RUN)), store.redis.pttl(store.keys.run(RUN))
    assert kept > 0 and abs(kept - run_kept) < 1000  # it expires with the run


def test_an_archive_is_smaller_than_the_streams_it_replaces(store):
    make_run(store, RunState.SUCCEEDED)
    spans(store, 40)
    keys = [store.keys.events(RUN), store.keys.trace(RUN)]
    streams = sum(store.redis.memory_usage(k) for k in keys)
    store.compact(RUN)
    assert store.redis.memory_usage(store.keys.archive(RUN)) < streams / 3


def test_a_live_run_is_not_compacted_and_leaves_the_index(store):
    make_run(store, RunState.RUNNING)
    store.redis.zadd(store.keys.ended(shard_of(RUN)), {RUN: T})  # as if it ended, then retried
    assert store.compact(RUN) is False
    assert store.redis.exists(store.keys.events(RUN)) == 1
    assert store.redis.exists(store.keys.archive(RUN)) == 0
    assert store.ended_before(T + 2, 10) == []


def test_an_unknown_run_leaves_the_index(store):
    store.redis.zadd(store.keys.ended(shard_of(RUN)), {RUN: T})
    assert store.compact(RUN) is False
    assert store.ended_before(T + 2, 10) == []


def test_compact_refuses_when_the_run_changed_since_it_was_read(store):
    make_run(store, RunState.SUCCEEDED)
    spans(store, 2)
    last = store.history(RUN, "0-0")[-1][0]
    blob = archive.pack([], [])
    for stale in ([RUN, blob, "1-1", 2, 0], [RUN, blob, last, 1, 0], [RUN, blob, last, 2, 7]):
        assert store._run_script("compact", RUN, stale) == -1
    assert store.redis.exists(store.keys.archive(RUN)) == 0


def test_a_run_retried_after_compaction_reads_archive_then_stream_and_compacts_again(store):
    make_run(store, RunState.FAILED)
    spans(store, 1)
    archived = store.history(RUN, "0-0")
    store.compact(RUN)
    gen, refusal = store.restart(RUN, expected_state=RunState.FAILED, reason="retry",
                                 now=T + 5)
    assert gen == 1 and refusal is None
    after = store.history(RUN, "0-0")
    assert after[:len(archived)] == archived and len(after) > len(archived)
    assert store.history(RUN, archived[-1][0]) == after[len(archived):]
    # ids go on increasing across the archive, even within the millisecond of the last
    ids = [cursor_order(event_id) for event_id, _ in after]
    assert ids == sorted(set(ids))
    assert store.last_event(RUN) == after[-1]
    assert fail(store, now=T + 6, gen=1)
    whole = store.history(RUN, "0-0")
    store.compact(RUN)
    assert store.history(RUN, "0-0") == whole
    assert store.redis.xlen(store.keys.events(RUN)) == 0


@pytest.mark.parametrize("kept", [False, True], ids=["read", "kept"])
def test_a_compacted_history_read_in_pages_is_every_event_once_in_order(store, monkeypatch,
                                                                        kept):
    """Each page is cut from the archive by a binary search on its ids (each page unpacked
    the whole archive again: reading a long run was quadratic, bench/history_read.py)."""
    events = [(f"{1_700_000_000_000 + i // 3}-{i % 3}", f'{{"n":{i}}}') for i in range(1000)]
    assert len(archive.pack(events, [])) < archive.KEPT_FROM_BYTES  # read, not kept...
    if kept:
        monkeypatch.setattr(archive, "KEPT_FROM_BYTES", 0)  # ... unless kept however short
    store.redis.set(store.keys.archive(RUN), archive.pack(events, []))
    pages, cursor = [], "0-0"
    while page := store.history(RUN, cursor, 64):
        pages.append(page)
        cursor = page[-1][0]
    assert [e for page in pages for e in page] == events
    assert [len(p) for p in pages] == [64] * 15 + [40]
    assert store.history(RUN, events[500][0], 2) == events[501:503]
    assert store.history(RUN, "1700000000100", 1) == [events[301]]  # "-0" when it has no "-seq"
    assert store.read_new(RUN, events[-2][0], block_ms=1) == events[-1:]
    assert store.last_event(RUN) == events[-1]


def test_a_kept_unpacked_archive_is_not_changed_by_what_a_reader_does_with_a_read(
        store, monkeypatch):
    """The last archives read are kept unpacked for the next page: a caller appending to
    the lists it got (compaction does) must not change what the next read sees."""
    monkeypatch.setattr(archive, "KEPT_FROM_BYTES", 0)  # kept, however short
    events = [("1-0", '{"n":0}'), ("2-0", '{"n":1}')]
    blob = archive.pack(events, ['{"id":"a"}'])
    got_events, got_spans = archive.unpack(blob)
    got_events.append(("3-0", "{}"))
    got_spans.clear()
    assert archive.unpack(blob) == (events, ['{"id":"a"}'])
    archive.events_after(blob, "0-0").clear()
    assert archive.events_after(blob, "0-0") == events


# -- trace.lua: the trace expires with the run -----------------------------------------------


def test_a_live_runs_trace_never_expires_and_an_ended_runs_expires_with_it(store):
    make_run(store, RunState.RUNNING)
    spans(store, 2)
    assert store.redis.pttl(store.keys.trace(RUN)) == -1  # a live run may wait for weeks
    complete(store)
    assert finish(store)
    store.append_trace([(RUN, '{"id":"late"}')])  # a span flushed after the run ended
    kept, run_kept = store.redis.pttl(store.keys.trace(RUN)), store.redis.pttl(store.keys.run(RUN))
    assert kept > 0 and abs(kept - run_kept) < 1000


def test_a_span_after_compaction_expires_with_the_run_instead_of_never(store):
    """A step of a cancelled run that goes on past compaction wrote a trace stream with no
    expiry: a key kept for ever. It is kept as long as the run, and read after the archive."""
    make_run(store, RunState.CANCELLED)
    archived = spans(store)
    assert store.compact(RUN) is True
    store.append_trace([(RUN, '{"id":"straggler"}')])
    kept, run_kept = store.redis.pttl(store.keys.trace(RUN)), store.redis.pttl(store.keys.run(RUN))
    assert kept > 0 and abs(kept - run_kept) < 1000
    assert store.read_trace(RUN) == [*archived, '{"id":"straggler"}']


def test_a_span_of_a_run_gone_is_dropped(store):
    store.append_trace([("run-expired", '{"id":"x"}')])
    assert store.redis.exists(store.keys.trace("run-expired")) == 0


def test_the_trace_script_is_loaded_again_when_redis_forgot_it(store):
    make_run(store, RunState.RUNNING)
    store.redis.script_flush()
    spans(store, 1)
    assert store.redis.xlen(store.keys.trace(RUN)) == 1
