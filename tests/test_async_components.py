"""``@component`` on ``async def``: sequences, parallel branches, fan-outs (batched too),
agent loops, inline sub-steps, retries, caching, timeouts, cancels and waits, on the
threads, prefork and gevent pools; and outside a run, a plain coroutine."""

from __future__ import annotations

import asyncio

import pytest

import flowkit
from flowkit.engine import control
from flowkit.errors import StepError
from flowkit.store import get_store
from flowkit.testing import WorkerProcess
from tests import async_workflows as aw
from tests.conftest import ROOT, wait_until

WAIT = 60
POOLS = ("threads", "prefork", "gevent")


@pytest.fixture(scope="module")
def pools(flowkit_env):
    """A worker process per pool, each on its own queue. Not one in this process: a second
    embedded worker of the same app failed to stop in time, and the session's embedded
    worker took no message after it."""
    workers: list = []
    for pool, concurrency in (("threads", 4), ("prefork", 2), ("gevent", 20)):
        workers.append(
            WorkerProcess(
                "tests.async_app",
                name=f"async-{pool}",
                queues=(aw.QUEUES[pool],),
                pool=pool,
                concurrency=concurrency,
                env=flowkit_env,
                cwd=ROOT,
            )
        )
    for w in workers:
        w.start()
    yield workers
    for w in workers:
        w.terminate(20)


@pytest.fixture
def on(store, pools):
    """The workflows of one pool: ``on("gevent")["sequence"]``."""
    return aw.WORKFLOWS.__getitem__


def counts(run) -> dict[str, int]:
    r = get_store().redis
    prefix = f"acount:{run.id}:"
    return {k[len(prefix) :]: int(r.get(k)) for k in r.scan_iter(f"{prefix}*")}


def marked(run, what: str) -> bool:
    return bool(get_store().redis.exists(f"amark:{run.id}:{what}"))


pytestmark = pytest.mark.integration


@pytest.mark.parametrize("pool", POOLS)
def test_a_sequence_of_async_steps_with_inline_async_sub_steps(on, pool):
    run = on(pool)["sequence"].start({"n": 1})
    # 1 -> 2; pair: (2+1) + (2*2) + (2*3) = 13; double -> 26
    assert run.result(WAIT) == {"n": 26}
    assert counts(run) == {"add_one": 2, "double": 2, "sync_triple": 1}
    types = [(e.type, e.data.get("step")) for e in run.events()]
    assert ("step.output", "1:a.pair") in types and ("step.progress", "1:a.pair") in types
    chunks = [e.data["chunk"] for e in run.events() if e.type == "step.output"]
    assert chunks == ["sum 7"]
    trace = get_store().checkpoints(run.id)
    assert {"1:a.pair/0:a.add_one", "1:a.pair/1:a.double", "1:a.pair/2:a.sync_triple"} <= set(trace)


@pytest.mark.parametrize("pool", POOLS)
def test_a_batched_fan_out_of_async_items_runs_them_at_once(on, pool):
    run = on(pool)["batched"].start({"n": 5})  # one batch of five items sleeping 1 s each
    assert run.result(WAIT) == {"n": 0 + 1 + 4 + 9 + 16}
    assert counts(run) == {f"square-{i}": 1 for i in range(5)}
    # one after another they would take 5 s; together about 1 s, on one event loop
    assert _spread(run) < 4.0
    assert get_store().redis.scard(f"aloops:{run.id}") == 1


def _spread(run) -> float:
    """Seconds from the first item's start to the last item's completion."""
    stamps = [
        e.id
        for e in run.events()
        if "a.square" in (e.data.get("step") or "") and e.type in ("step.started", "step.completed")
    ]
    ms = [int(s.split("-")[0]) for s in stamps]
    return (max(ms) - min(ms)) / 1000


@pytest.mark.parametrize("pool", POOLS)
def test_a_timeout_cancels_the_coroutine(on, pool):
    run = on(pool)["timing_out"].start({})
    with pytest.raises(StepError) as failed:
        run.result(WAIT)
    assert "timeout" in str(failed.value)
    assert wait_until(lambda: marked(run, "sleeper_stopped"), 10, "the coroutine's finally")


def test_an_async_sub_step_that_timed_out_is_retried_and_its_step_goes_on(on):
    """Its timeout marked the whole step's attempt abandoned: the run hung."""
    run = on("threads")["sub_step_retried"].start({"n": 1})
    assert run.result(WAIT) == {"n": 2}
    assert counts(run) == {"slow_first_call": 2}
    assert [e.data["chunk"] for e in run.events() if e.type == "step.output"] == [
        "the step goes on"]


def test_a_coroutine_that_blocks_its_loop_past_its_timeout_fails_the_attempt(on):
    """It returned before the timeout could fire (the loop was blocked) and succeeded,
    however long it took; a sync step over its timeout fails."""
    run = on("threads")["blocking"].start({})
    with pytest.raises(StepError, match="0.3s timeout"):
        run.result(WAIT)
    assert counts(run) == {"blocks": 1}


@pytest.mark.parametrize("pool", POOLS)
def test_a_coroutine_that_swallows_its_timeout_s_cancellation_fails_its_attempt_on_time(on,
                                                                                          pool):
    """The attempt waited for it however long it ran on (for ever for one that never
    returns: the run hung, its worker slot taken and its lease beaten). It is abandoned, as
    a sync step's thread is, and runs on until it returns."""
    run = on(pool)["deaf"].start({})
    with pytest.raises(StepError, match="0.3s timeout"):
        run.result(WAIT)
    assert not marked(run, "deaf_ended")  # failed while it still ran
    get_store().redis.set(f"agate:{run.id}", 1)
    assert wait_until(lambda: marked(run, "deaf_ended"), 10, "the abandoned coroutine's end")


def test_a_sub_step_that_swallows_its_timeout_s_cancellation_calls_nothing_after_it(on):
    """It was told it timed out only when it returned: the component it called past its
    deadline ran (a side effect of an attempt that was over)."""
    run = on("threads")["stubborn"].start({"n": 1})
    assert run.result(WAIT) == {"timed_out": True}
    assert "add_one" not in counts(run)


def test_a_sync_step_that_forgets_await_fails_at_once_saying_so(on):
    run = on("threads")["forgetting"].start({"n": 1})
    with pytest.raises(StepError) as failed:
        run.result(WAIT)
    assert "async component 'a.add_one' called without await" in str(failed.value)
    assert "make the calling step `async def` and await it" in str(failed.value)


def test_a_step_that_throws_away_an_unawaited_call_fails_naming_it(on):
    """Its call never ran and the run succeeded: only a RuntimeWarning in the worker's log
    said so, naming StepContext._sub_step_async."""
    run = on("threads")["forgetting"].start({"n": -1})
    with pytest.raises(StepError) as failed:
        run.result(WAIT)
    assert ("async component 'a.add_one' called without await, so that call never ran: make "
            "the calling step `async def` and await it") in str(failed.value)
    assert counts(run).get("add_one") is None


@pytest.mark.parametrize("pool", POOLS)
def test_cancelling_the_run_cancels_the_coroutine(on, pool):
    run = on(pool)["cancelling"].start({})
    wait_until(lambda: counts(run).get("sleeper") == 1, 30, "the step to start")
    flowkit.cancel(run.id)
    assert run.wait(WAIT).state == "cancelled"
    # the step is polled each second: its coroutine is cancelled long before its 60 s sleep
    assert wait_until(lambda: marked(run, "sleeper_stopped"), 10, "the coroutine's finally")


@pytest.mark.parametrize("pool", POOLS)
def test_a_failed_sub_step_cancels_the_sub_steps_gathered_with_it(on, pool):
    """asyncio.gather does not cancel the others when one fails: they ran on, for an
    attempt that was over (an LLM call among them billed to its end)."""
    run = on(pool)["gathering"].start({})
    with pytest.raises(StepError) as failed:
        run.result(WAIT)
    assert "this sub-step failed" in str(failed.value)
    assert counts(run) == {"sleeper": 1}
    assert wait_until(lambda: marked(run, "sleeper_stopped"), 10, "the sibling's finally")
    assert "0:a.gatherer/0:a.sleeper" not in get_store().checkpoints(run.id)


@pytest.mark.parametrize("pool", POOLS)
def test_an_async_step_pauses_for_input_and_resumes_without_repeating_its_sub_step(on, pool):
    run = on(pool)["asking"].start({"n": 1})
    wait_until(lambda: run.refresh().state == "waiting", 30, "the run to wait")
    flowkit.send_input(run.id, "extra", {"k": 40})
    assert run.result(WAIT) == {"n": 42}
    assert counts(run) == {"add_one": 1}


def test_batched_items_that_pause_on_gevent_log_no_traceback(on, pools):
    """Each item ran in a greenlet that ended with the engine's Ignore as it paused: gevent's
    hub printed "<Greenlet ...> failed with Ignore" and a traceback for every one, in
    every wide fan-out of LLM items that waited."""
    gevent_worker = next(w for w in pools if w.name == "async-gevent")
    run = on("gevent")["asking_items"].start({"n": 3})
    wait_until(lambda: len(run.refresh().waits or ()) == 3, 30, "the three items to wait")
    for i in range(3):
        flowkit.send_input(run.id, f"item-{i}", {"k": i + 1})
    assert run.result(WAIT) == {"n": 6}
    noise = [line for line in list(gevent_worker.lines) if "failed with Ignore" in line]
    assert not noise, noise


def test_a_wait_inside_a_task_group_pauses_the_step(on):
    """asyncio.TaskGroup wraps a task's pause in a BaseExceptionGroup: the step failed as
    ComponentExit ("would end the worker's thread") instead of waiting."""
    run = on("threads")["asking_in_a_group"].start({})
    wait_until(lambda: run.refresh().state in ("waiting", "failed"), 30, "the run to wait")
    assert run.refresh().state == "waiting", run.refresh().error
    flowkit.send_input(run.id, "k", 7)
    assert run.result(WAIT) == {"k": 7}


def test_a_cancel_seen_inside_a_task_group_stops_the_step_as_cancelled(on):
    """asyncio.TaskGroup wraps the RunCancelled its task's emit raised: the attempt was an
    error (its trace, metrics and hooks said so), retried by its policy, and a short Redis
    outage there (StoreUnavailable, wrapped alike) failed the run the reaper would restart."""
    run = on("threads")["emitting_in_a_group"].start({})
    wait_until(lambda: counts(run).get("ticking") == 1, 30, "the task to emit")
    flowkit.cancel(run.id)
    assert run.wait(WAIT).state == "cancelled"

    def statuses() -> dict:
        return {s["attempt"]: s["status"] for s in control.trace(run.id) if s.get("kind") == "step"}

    # its own closing record (read before it is written, an open span of an ended run
    # shows as "abandoned")
    wait_until(lambda: statuses().get(1) in ("cancelled", "error"), WAIT, "the attempt to end")
    assert statuses() == {1: "cancelled"}, statuses()


def test_an_async_step_waits_for_an_event_then_sleeps_without_holding_the_worker(on, beat):
    run = on("threads")["listening"].start({"n": 1})
    wait_until(lambda: run.refresh().state == "waiting", 30, "the run to wait for the event")
    assert flowkit.send_event(f"paid:{run.id}", {"amount": 40}) == 1
    assert run.result(WAIT) == {"n": 42}
    kinds = [e.data.get("kind") for e in run.events() if e.type == "run.waiting"]
    assert kinds == ["event", "sleep"]
    assert counts(run) == {"add_one": 1, "after_sleep": 1}


def test_parallel_branches_of_async_and_sync_steps(on):
    run = on("threads")["branches"].start({"n": 1})
    # 2 -> [double 4, add_one 3 -> triple 9] -> 13
    assert run.result(WAIT) == {"n": 13}


def test_a_fan_out_of_async_items(on):
    run = on("threads")["fanned"].start({"n": 4})
    assert run.result(WAIT) == {"n": 14}


def test_an_async_agent_loop_continues_with_itself(on):
    run = on("threads")["looping"].start({})
    assert run.result(WAIT) == {"n": 3}
    steps = [e.data["step"] for e in run.events() if e.type == "step.completed"]
    assert len(steps) == 3


def test_an_async_step_retries_per_its_policy(on):
    run = on("threads")["retrying"].start({"n": 5})
    assert run.result(WAIT) == {"n": 5, "tries": 3}
    assert [e.type for e in run.events()].count("step.retrying") == 2


def test_an_async_step_is_cached(on):
    assert on("threads")["caching"].start({"key": "k1"}).result(WAIT) == {"key": "k1"}
    assert on("threads")["caching"].start({"key": "k1"}).result(WAIT) == {"key": "k1"}
    assert int(get_store().redis.get("acached:k1")) == 1


# -- outside a run: a plain coroutine -----------------------------------------------------


def test_outside_a_run_an_async_component_is_a_coroutine():
    made = aw.split({"n": 3})
    assert asyncio.iscoroutine(made)
    assert asyncio.run(made) == [0, 1, 2]


@pytest.mark.anyio
async def test_outside_a_run_it_awaits_under_anyio_with_its_timeout():
    assert await aw.split({"n": 2}) == [0, 1]
    with pytest.raises(flowkit.StepTimeout):
        await _slow.timeout(0.05)({})


@flowkit.component(name="a.slow_outside")
async def _slow(data: dict) -> dict:
    await asyncio.sleep(5)
    return data


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_a_coroutine_whose_cancel_watcher_fails_runs_to_its_end():
    """The watcher asks Redis whether the run was cancelled; one that raised (Redis away past
    its retries) cut the coroutine as if its deadline had passed, and one with no timeout
    failed on formatting it. The coroutine goes on, unwatched."""
    from flowkit import coroutines

    def redis_away() -> bool:
        raise flowkit.StoreUnavailable("flowkit's Redis is unreachable")

    async def work(seconds: float) -> int:
        await asyncio.sleep(seconds)
        return 42

    later = coroutines.CANCEL_POLL_SECONDS * 1.5  # past the watcher's first look
    for timeout in (None, 60.0):
        assert coroutines.run_coroutine(work, (later,), {}, timeout,
                                        cancelled=redis_away) == 42


@pytest.mark.parametrize("pool", POOLS)
def test_the_text_an_async_sub_step_streamed_before_it_failed_and_ran_again_is_dropped(
        on, pool):
    run = on(pool)["sub_step_restreamed"].start({})
    assert run.result(WAIT) == {"text": "answer"}
    history = run.events()
    [retried] = [e.data for e in history if e.type == "sub_step.retrying"]
    assert retried["sub_step"].endswith("/0:a.half_then_whole@1")
    assert retried["error"] == "ConnectionError: the stream was cut off"
    chunks = [(e.data.get("sub_steps"), e.data["chunk"]) for e in history
              if e.type == "step.output"]
    assert [chunk for _, chunk in chunks] == ["Intro. ", "Half ", "Half ", "and whole."]
    failed = flowkit.events.superseded_sub_steps(history)
    assert failed == {retried["sub_step"]}
    assert "".join(c for subs, c in chunks if not set(subs or ()) & failed) == (
        "Intro. Half and whole.")


@pytest.mark.parametrize("pool", POOLS)
def test_a_component_called_by_a_task_its_step_left_running_is_refused_after_the_attempt(
        on, pool):
    """It ran its body and checkpointed into the run that had succeeded meanwhile."""
    run = on(pool)["leaving_a_task"].start({"n": 1})
    assert run.result(WAIT) == {"ok": True}
    r = get_store().redis
    r.set(f"agate:{run.id}", 1)
    wait_until(lambda: r.exists(f"amark:{run.id}:late_call_refused")
               or r.exists(f"amark:{run.id}:late_call_ran"), WAIT, "the late call to end")
    said = r.get(f"amark:{run.id}:late_call_refused")
    assert said is not None and "has ended; its call a.counted, made by a task or thread" in (
        said.decode() if isinstance(said, bytes) else said)
    assert counts(run) == {}
    assert list(get_store().checkpoints(run.id)) == ["0:a.leaves_a_task_running"]


@pytest.mark.parametrize("pool", POOLS)
def test_an_async_step_awaits_a_child_run_and_a_blocking_wait_on_its_loop_is_refused(on, pool):
    """A blocking result() held up the loop the child's async step needed: the parent waited
    out its whole timeout, told only "still running"."""
    queue = aw.QUEUES[pool]
    run = on(pool)["starting_a_child"].start({"n": 3, "awaits": True, "queue": queue})
    assert run.result(WAIT) == {"napped": 3}
    run = on(pool)["starting_a_child"].start({"n": 4, "awaits": False, "queue": queue})
    said = run.result(WAIT)["refused"]
    assert said.startswith("waiting for run ") and said.endswith(
        "would block the event loop of this process's async steps until it ends (its own "
        "async steps may need that very loop): await run.wait_async() or run.result_async() "
        "instead.")
