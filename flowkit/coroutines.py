"""Running ``async def`` components from flowkit's synchronous engine, on every Celery pool.

A step's task body is synchronous (Celery calls it in a process, a thread or a greenlet),
so an async component's coroutine needs an event loop to run on. Each worker process has
one, made on first use (and again in a forked child), and every async step of the process
runs on it: the task's thread or greenlet hands it the coroutine and waits for the result.
So the async items of a batched fan-out run concurrently on one loop, and an SDK client's
connections serve every step of the process.

- prefork and threads pools: the loop runs in a daemon thread of its own.
- gevent pool: asyncio keeps its "running loop" per OS thread, which every greenlet
  shares, so two greenlets each running a loop would collide. The loop runs in a greenlet
  of its own instead, and the steps' greenlets wait for it cooperatively (gevent patches
  the selector, the self-pipe and the future's lock, so all of them yield to the hub).

Code that blocks without awaiting (CPU work, a blocking call gevent does not patch) holds
up every async step of its process meanwhile: keep it out of async components.

Library code uses the same loop for its own I/O: the LLM client's sync calls send their
requests from it (``on_process_loop``), so one aiohttp connection pool serves every
step of the process, sync or async.

A timeout cancels the coroutine (``asyncio.timeout``) and raises StepTimeout. Inside a run
the coroutine is also watched: when the run is cancelled or restarted elsewhere, it is
cancelled and RunCancelled raised, so an async step stops at its next ``await``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import tenacity

from .errors import RunCancelled, StepTimeout
from .locks import ForkSafeLock

#: How often a running async step checks whether its run was cancelled (seconds).
CANCEL_POLL_SECONDS = 1.0

_shared: dict[str, Any] = {}  # the gevent worker's loop: {"pid": ..., "loop": ...}
_shared_lock = ForkSafeLock()
#: What to close when a fresh loop's step is done (see close_with_loop).
_closers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, list[Callable[[], Awaitable[Any]]]
] = weakref.WeakKeyDictionary()
log = logging.getLogger(__name__)


def is_async(fn: Callable[..., Any]) -> bool:
    """True for an ``async def`` function (also behind functools.partial or ``__call__``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    method = None if inspect.isroutine(fn) else type(fn).__dict__.get("__call__")
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(method)


def run_coroutine(
    fn: Callable[..., Awaitable[Any]],
    args: tuple,
    kwargs: dict,
    timeout: float | None,
    on_timeout: Callable[[], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Any:
    """``await fn(*args, **kwargs)`` from synchronous code, with the caller's context
    variables (the running step); see the module's docstring for where the loop runs."""
    main = _guarded(fn, args, kwargs, timeout, on_timeout, cancelled)
    if not _on_a_running_loop():
        return asyncio.run_coroutine_threadsafe(main, _process_loop()).result()
    # called from async code in this thread (a sync helper awaited nothing): a loop of its
    # own in a helper thread, since this thread's loop is busy running the caller
    run = contextvars.copy_context().run
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = run(asyncio.run, _closing(main))
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    helper = threading.Thread(target=target, name="flowkit-async-helper", daemon=True)
    helper.start()
    helper.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def on_process_loop(make: Callable[[], Awaitable[Any]]) -> Any:
    """``await make()`` on this process's event loop, from synchronous code, and wait.

    The lean path for a library call made many times a second (the LLM client's requests):
    no timeout, no cancellation watcher, no context copy; the caller keeps its own
    policies. If the caller stops waiting (a gevent ``Timeout``, a killed greenlet, a
    KeyboardInterrupt) the coroutine is cancelled. Not for a caller running on an event
    loop itself (see :func:`can_wait_for_loop`): it would wait for the loop it holds up."""
    future = asyncio.run_coroutine_threadsafe(_started(make), _process_loop())
    try:
        return future.result()
    except BaseException:
        future.cancel()  # cancels the task on the loop (a no-op once it is done)
        raise


async def _started(make: Callable[[], Awaitable[Any]]) -> Any:
    return await make()


def can_wait_for_loop() -> bool:
    """Whether the caller may block until the process's loop runs a coroutine (it is not
    itself running on an event loop)."""
    return not _on_a_running_loop()


def close_at_exit(close: Callable[[], Awaitable[Any]]) -> None:
    """Have ``close()`` awaited on the process's loop when the interpreter exits (a client
    holding the shared loop's connections: left to the garbage collector, aiohttp's
    complain of an unclosed session)."""
    key = ("at_exit", os.getpid())  # a forked child has a loop, and clients, of its own
    with _shared_lock:
        first = key not in _shared
        _shared.setdefault(key, []).append(close)
    if first:
        atexit.register(_close_at_exit)


def _close_at_exit() -> None:
    loop = shared_loop()
    closers = _shared.pop(("at_exit", os.getpid()), [])
    if loop is None or loop.is_closed() or not closers:
        return

    async def close_all() -> None:
        for close in closers:
            with contextlib.suppress(Exception):  # tidying up on the way out
                await close()

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=2)


def close_with_loop(close: Callable[[], Awaitable[Any]]) -> None:
    """Have ``close()`` awaited when the step's fresh event loop is done (a client holding
    connections of this loop: closed later, on a closed loop, they complain)."""
    loop = asyncio.get_running_loop()
    with _shared_lock:
        _closers.setdefault(loop, []).append(close)


async def _closing(main: Awaitable[Any]) -> Any:
    try:
        return await main
    finally:
        with _shared_lock:
            closers = _closers.pop(asyncio.get_running_loop(), [])
        for close in closers:
            try:
                await close()
            except Exception:  # closing is tidying up: never the step's failure
                log.debug("flowkit: closing %r at the loop's end failed", close, exc_info=True)


async def call_with_policy(
    fn: Callable[..., Awaitable[Any]],
    args: tuple,
    kwargs: dict,
    policy: Any,
    on_timeout: Callable[[], None] | None = None,
    before: Callable[[Any], None] | None = None,
    before_sleep: Callable[[Any], None] | None = None,
) -> Any:
    """``await fn(...)`` under a component policy: its retries (tenacity's async form of
    the same stop, wait and retry rules, sleeping with ``asyncio.sleep``) and its timeout;
    ``before`` and ``before_sleep`` are tenacity's hooks before each attempt and after a
    failed one."""
    sync = policy.retrying()
    hooks = {"before": before, "before_sleep": before_sleep}
    retrying = tenacity.AsyncRetrying(
        stop=sync.stop, wait=sync.wait, retry=sync.retry, reraise=True,
        **{name: hook for name, hook in hooks.items() if hook is not None},
    )
    async for attempt in retrying:
        with attempt:
            return await _guarded(fn, args, kwargs, policy.timeout, on_timeout, None)
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def _guarded(
    fn: Callable[..., Awaitable[Any]],
    args: tuple,
    kwargs: dict,
    timeout: float | None,
    on_timeout: Callable[[], None] | None,
    cancelled: Callable[[], bool] | None,
) -> Any:
    ended: list[float] = []  # the loop's time when the coroutine itself returned
    work = asyncio.ensure_future(_timed(fn(*args, **kwargs), ended))
    stopped: list[bool] = []
    watcher = asyncio.ensure_future(_watch(work, cancelled, stopped)) if cancelled else None
    expired: list[bool] = []

    def at_deadline() -> None:
        # told at the deadline, not when it returns: a coroutine that swallows its
        # cancellation runs on, and what it sent or called meanwhile was accepted
        if not work.done():
            expired.append(True)
            if on_timeout is not None:
                on_timeout()

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    marker = loop.call_at(deadline, at_deadline) if deadline is not None else None
    cut = False  # cancelled here at its deadline
    try:
        try:
            watching = watcher
            while True:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait([work, *([watching] if watching else [])], timeout=left,
                                   return_when=asyncio.FIRST_COMPLETED)
                if work.done() or stopped or (deadline is not None and loop.time() >= deadline):
                    break
                watching = None  # its watcher failed (Redis away): the work goes on, unwatched
            if not work.done():  # past its deadline, or its run stopped: cancelled
                cut = not stopped
                work.cancel()
                # one that swallows its cancellation is left to run on, abandoned (as a sync
                # step's thread is): the attempt waited for it however long it ran, for
                # ever for one that never returns, its lease beaten all the while
                await asyncio.wait([work], timeout=ABANDON_AFTER_SECONDS)
        except asyncio.CancelledError:  # the caller stopped waiting: the work goes too
            work.cancel()
            raise
        if not work.done():
            work.add_done_callback(_retrieve)
            if stopped:
                raise RunCancelled("the run was cancelled or restarted; its coroutine, "
                                   "cancelled, runs on (abandoned)")
        else:
            try:
                result = work.result()
            except TimeoutError:
                if deadline is None or loop.time() < deadline:
                    raise  # the component's own TimeoutError
            except asyncio.CancelledError:
                if stopped:
                    raise RunCancelled(
                        "the run was cancelled or restarted; the coroutine was cancelled"
                    ) from None
                if not cut:
                    raise
            except RunCancelled:
                if not (expired or cut):
                    raise  # the run's own cancel
                # a call or send it made past its deadline was refused: it timed out
            else:
                # a coroutine that blocked the loop (time.sleep, a sync SDK call) past its
                # deadline returns before the timeout can fire: it fails as one cancelled at
                # its deadline does (it succeeded, however long it took)
                if deadline is None or not ended or ended[0] <= deadline:
                    return result
    finally:
        if watcher is not None:
            watcher.cancel()
        if marker is not None:
            marker.cancel()
    if on_timeout is not None:
        on_timeout()
    raise StepTimeout(f"attempt ran longer than its {timeout:g}s timeout")


#: How long a coroutine cancelled at its deadline (or its run's cancel) gets to end before
#: its attempt ends without it.
ABANDON_AFTER_SECONDS = 1.0


def _retrieve(task: asyncio.Future) -> None:
    """What an abandoned coroutine ends with is no one's: read, so asyncio logs no "never
    retrieved" error for it."""
    if not task.cancelled():
        task.exception()


async def _timed(call: Awaitable[Any], ended: list[float]) -> Any:
    """``await call``, noting the loop's time as it returns (not when its awaiter resumes:
    a busy loop may resume it past a deadline the call itself met)."""
    result = await call
    ended.append(asyncio.get_running_loop().time())
    return result


async def _watch(work: asyncio.Future, cancelled: Callable[[], bool], stopped: list) -> None:
    while not work.done():
        await asyncio.sleep(CANCEL_POLL_SECONDS)
        if not work.done() and cancelled():
            stopped.append(True)
            work.cancel()
            return


def _on_a_running_loop() -> bool:
    """Whether the caller runs on an event loop (then it cannot wait for one). On gevent,
    asyncio's running loop is per OS thread, so every greenlet seems to run on the shared
    loop: only the loop's own greenlet does."""
    if gevent_patched():
        import gevent

        return gevent.getcurrent() is _shared.get("greenlet")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def gevent_patched() -> bool:
    """Whether this process runs under gevent's monkey patches (a gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")



def shared_loop() -> asyncio.AbstractEventLoop | None:
    """This process's event loop for async steps, if it made one (it outlives every step)."""
    return _shared.get("loop") if _shared.get("pid") == os.getpid() else None


def on_shared_loop() -> bool:
    """Whether the caller runs on this process's loop for async steps (an async step, or
    code it calls): blocking there holds up every async step of the process. Not another
    loop's code (Playwright's sync API runs one under the caller's sync code)."""
    loop = shared_loop()
    if loop is None:
        return False
    if gevent_patched():
        import gevent

        return gevent.getcurrent() is _shared.get("greenlet")
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _process_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for async steps, made on first use (again after a fork):
    in a greenlet of its own on gevent, else in a daemon thread of its own."""
    with _shared_lock:
        if _shared.get("pid") != os.getpid():
            loop = asyncio.new_event_loop()
            if gevent_patched():
                _serve_in_greenlet(loop)
            else:
                started = threading.Event()
                threading.Thread(
                    target=_serve, args=(loop, started.set), daemon=True, name="flowkit-event-loop"
                ).start()
                started.wait()
            _shared.update(pid=os.getpid(), loop=loop)
        return _shared["loop"]


def _serve(loop: asyncio.AbstractEventLoop, started: Callable[[], None]) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started)
    loop.run_forever()


def _serve_in_greenlet(loop: asyncio.AbstractEventLoop) -> None:
    import gevent  # only ever reached in a gevent-patched process
    from gevent.event import Event

    started = Event()
    _shared["greenlet"] = gevent.spawn(_serve, loop, started.set)
    started.wait()
