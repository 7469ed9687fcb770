"""Token streaming: chunks go to the run's stream in batches while the caller iterates.

A batch is flushed once it holds ``LLM_STREAM_FLUSH_CHARS`` characters or its
first token is ``LLM_STREAM_FLUSH_SECONDS`` old, so a reader sees text appear
smoothly without one Redis write per token.

The reading thread flushes a batch when a token arrives and finds it old enough; when
the model pauses (slow tokens, reasoning, a provider's hiccup) no token arrives, and the
text already read waited out the whole pause (seconds). One thread per process (not one
per stream: a worker streams a thousand at once) flushes what is still pending a quarter
of the interval after it was due: a stream whose tokens flow flushes itself, from its own
thread, as before, and the flusher only writes the batches of streams that paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import openai

from ..config import get_settings
from ..engine.step import StepContext, current_sub_step
from ..errors import ATTEMPT_SIGNALS, StepError, StepTimeout, describe_error

if TYPE_CHECKING:
    from ..engine.step import _SubStepAttempt

log = logging.getLogger(__name__)

#: How late past its interval the flusher writes a batch still pending: the reading thread,
#: when its next token comes before, writes it itself (a thousand streams' writes in one
#: thread would queue behind each other); also how close deadlines are taken together, so
#: that the flusher wakes a few dozen times a second at most however many streams there are.
LATE_SHARE = 0.25


class ChunkBatcher:
    """Collects text and sends it as ``step.output`` chunks of the running step: its
    reading thread (or event loop) adds and flushes; the process's flusher flushes a batch
    the model's pause left pending. Its lock keeps the two apart and the chunks in order
    (a batch is taken and emitted under it)."""

    def __init__(self, ctx: StepContext | None, call: _SubStepAttempt | None = None) -> None:
        settings = get_settings()
        self.ctx = ctx
        #: the sub-step attempt reading it: its text is refused once that attempt timed out
        self._call = call
        self.max_chars = settings.llm_stream_flush_chars
        self.max_delay = settings.llm_stream_flush_seconds
        self._parts: list[str] = []
        self._size = 0
        self._since = 0.0
        self._lock = threading.Lock()
        #: the pending batch's number: a deadline of a batch flushed since is void
        self._batch = 0
        self._closed = False
        #: why the flusher's write of a batch failed (the run was cancelled): raised to the
        #: reader at its next token, as its own write's failure is
        self._failed: BaseException | None = None

    def add(self, text: str) -> None:
        if not text or self.ctx is None:
            return
        with self._lock:
            self._raise_failed()
            started = not self._parts
            if started:
                self._since = time.monotonic()
                self._batch += 1
            self._parts.append(text)
            self._size += len(text)
            if self._size >= self.max_chars or time.monotonic() - self._since >= self.max_delay:
                self._flush()
                return
            batch, due = self._batch, self._since + self.max_delay * (1 + LATE_SHARE)
        if started:
            _flusher.flush_at(due, self, batch)

    def flush(self) -> None:
        """Send what is pending now (the stream ended; a late write's failure, left for a
        next token that did not come, is this write's to meet again)."""
        with self._lock:
            self._flush()

    def close(self) -> None:
        """The stream ended: the flusher sends nothing more of it."""
        with self._lock:
            self._closed = True
            self._parts, self._size = [], 0

    def flush_late(self, batch: int) -> None:
        """The flusher's: send batch ``batch`` if it is still pending (its reader waits
        for a token that has not come) and its attempt goes on."""
        with self._lock:
            if self._closed or batch != self._batch or not self._parts or self._failed:
                return
            if self.ctx is None or self.ctx.abandoned_for(self._call):
                return  # a timed-out attempt's text is refused (its reader learns it)
            try:
                self._flush()
            except Exception as exc:  # noqa: BLE001 - the reader's to raise, not the flusher's
                self._failed = exc

    def _flush(self) -> None:
        if self._parts and self.ctx is not None:
            text = "".join(self._parts)
            self._parts, self._size = [], 0
            self.ctx.emit(text, self._call)

    def _raise_failed(self) -> None:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed


class _Flusher:
    """The process's one thread flushing batches past their deadline, earliest first. It
    sleeps until the earliest deadline (none: until one is added); one heap entry per batch,
    not per token, and a batch flushed by its reader leaves a void entry behind."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, ChunkBatcher, int]] = []
        self._order = itertools.count()  # ties never compare two batchers
        self._wake = threading.Condition(threading.Lock())
        self._pid = 0
        # a fork may come while the thread holds the lock: the child's would stay taken
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """In a forked child: none of the parent's streams, nor its thread (started anew)."""
        self._wake = threading.Condition(threading.Lock())
        self._due = []

    def flush_at(self, due: float, batcher: ChunkBatcher, batch: int) -> None:
        with self._wake:
            start = self._pid != os.getpid()  # the first in this process (or after a fork)
            if start:
                self._pid, self._due = os.getpid(), []
            entry = (due, next(self._order), batcher, batch)
            heapq.heappush(self._due, entry)
            # this entry the earliest now: the thread sleeps past it (a void entry of the same
            # stream at the top woke the thread at almost every batch)
            if self._due[0] is entry:
                self._wake.notify()
        if start:
            threading.Thread(target=self._loop, name="flowkit-llm-stream-flush",
                             daemon=True).start()

    def _take_due(self, pid: int) -> list[tuple[float, int, ChunkBatcher, int]] | None:
        """The entries due, waiting for the first; None once the process forked."""
        with self._wake:
            while self._pid == pid:
                now = time.monotonic()
                if self._due and self._due[0][0] <= now:
                    # what falls due within a fraction of the interval goes now too
                    horizon = now + get_settings().llm_stream_flush_seconds * LATE_SHARE
                    taken = []
                    while self._due and self._due[0][0] <= horizon:
                        taken.append(heapq.heappop(self._due))
                    return taken
                self._wake.wait(self._due[0][0] - now if self._due else None)
        return None

    def _loop(self) -> None:
        pid = os.getpid()
        while (taken := self._take_due(pid)) is not None:
            for _, _, batcher, batch in taken:
                try:
                    batcher.flush_late(batch)
                except Exception:  # the thread must live on: every stream's text is its
                    log.exception("flowkit: flushing a stream's text failed")


_flusher = _Flusher()


class TracedStream:
    """The SDK's stream, passed through chunk by chunk, teeing text to the run's stream.

    ``on_done(summary, error)`` runs once, when the stream ends, fails or is closed.
    Usage-only chunks the caller did not ask for (``include_usage``) are hidden. A
    Responses stream (``responses=True``) tees its ``response.output_text.delta`` events
    and takes usage, model and id from its ``response.completed`` event.

    A stream cut off (its body ended before a ``finish_reason`` or usage chunk, or a
    Responses stream before its ``response.completed`` or ``response.incomplete``)
    raises ``openai.APIConnectionError``, and one ending in ``response.failed`` or an
    ``error`` event raises ``openai.APIError``, as the SDK does for a chat stream's error
    payload: the step's retry runs the call again instead of keeping part of an answer.
    Only choice 0's text reaches the run's stream; the span keeps each choice's.
    """

    def __init__(
        self, stream: Any, ctx: StepContext | None, started: float, hide_usage_chunk: bool,
        on_done: Callable[[dict[str, Any], BaseException | None], None],
        responses: bool = False,
    ) -> None:
        self._stream = stream
        self._it = self._iterator(stream)
        #: the sub-step attempt reading it, if any: dropped with it when it times out
        self._call = current_sub_step()
        self._batcher = ChunkBatcher(ctx, self._call)
        self._started = started
        self._hide_usage = hide_usage_chunk
        self._on_done = on_done
        self._done = False
        self._ctx = ctx
        self._responses = responses
        self._ended = False  # a Responses stream's terminal event came
        self._take = self._take_event if responses else self._take_chunk
        #: the text of each choice (index), in order
        self.choice_parts: dict[int, list[str]] = {}
        #: streamed tool calls of each choice: index -> call index -> {name, arguments}
        self.tool_calls: dict[int, dict[int, dict[str, str]]] = {}
        self.finish_reasons: dict[int, str] = {}
        self.summary: dict[str, Any] = {"ttft": None, "finish_reason": None, "usage": None}
        if ctx is not None:  # left unclosed (a loop left with break): ended with the attempt
            ctx.at_end(self._abandon)

    @staticmethod
    def _iterator(stream: Any) -> Any:
        return iter(stream)

    def __iter__(self) -> TracedStream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = next(self._it)
            except StopIteration:
                cut = self._cut_off()
                self._finish(cut)
                if cut is not None:
                    raise cut from None
                raise
            except BaseException as exc:
                self._finish(exc)
                raise
            try:
                taken = self._take(chunk)
            except BaseException as exc:  # its text refused (the run was cancelled): stop it
                with contextlib.suppress(Exception):
                    self._stream.close()
                self._finish(exc)
                raise
            if taken:
                return chunk

    def _text(self, text: str, choice: int = 0) -> None:
        if self.summary["ttft"] is None:
            self.summary["ttft"] = time.monotonic() - self._started
        self.choice_parts.setdefault(choice, []).append(text)
        if choice == 0:  # the run's stream is one text: choice 0's (n > 1 mixed them)
            self._batcher.add(text)

    @property
    def text_parts(self) -> list[str]:
        """Choice 0's text so far."""
        return self.choice_parts.get(0, [])

    def _take_chunk(self, chunk: Any) -> bool:
        """Record a Chat Completions chunk; False hides it from the caller."""
        if getattr(chunk, "usage", None) is not None:
            self.summary["usage"] = chunk.usage
        if not self.summary.get("model"):  # the model and id the server answered with
            self.summary["model"] = getattr(chunk, "model", None)
            self.summary["id"] = getattr(chunk, "id", None)
        for choice in chunk.choices or ():
            index = getattr(choice, "index", 0) or 0
            content = getattr(choice.delta, "content", None)
            if content:
                self._text(content, index)
            for call in getattr(choice.delta, "tool_calls", None) or ():
                self._take_tool_call(index, call)
            if choice.finish_reason:
                self.finish_reasons[index] = choice.finish_reason
                self.summary["finish_reason"] = self.finish_reasons.get(
                    0, choice.finish_reason)
        return bool(chunk.choices) or not self._hide_usage

    def _take_tool_call(self, choice: int, delta: Any) -> None:
        """A streamed tool call's part: its name comes once, its arguments in pieces."""
        calls = self.tool_calls.setdefault(choice, {})
        call = calls.setdefault(getattr(delta, "index", len(calls)) or 0,
                                {"name": "", "arguments": ""})
        function = getattr(delta, "function", None)
        if function is not None:
            call["name"] += getattr(function, "name", None) or ""
            call["arguments"] += getattr(function, "arguments", None) or ""
        if self.summary["ttft"] is None:
            self.summary["ttft"] = time.monotonic() - self._started

    def _take_event(self, event: Any) -> bool:
        """Record a Responses stream event (every one reaches the caller)."""
        kind = getattr(event, "type", "")
        if kind == "response.output_text.delta" and event.delta:
            self._text(event.delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            self._ended = True
            response = event.response
            self.summary.update(usage=response.usage, model=response.model, id=response.id,
                                finish_reason=response.status)
            # a turn that calls tools: its span's output is its calls, as an unstreamed
            # turn's is (it was "")
            calls = [item for item in getattr(response, "output", None) or ()
                     if getattr(item, "type", None) == "function_call"]
            if calls:
                self.tool_calls[0] = {i: {"name": c.name, "arguments": c.arguments}
                                      for i, c in enumerate(calls)}
            if kind == "response.failed":
                error = getattr(response, "error", None)
                raise openai.APIError(
                    getattr(error, "message", None) or "The response failed (response.failed)",
                    self._http_request(),
                    body=error.model_dump() if hasattr(error, "model_dump") else None)
        elif kind == "error":
            self._ended = True
            body = {k: getattr(event, k, None) for k in ("code", "message", "param")}
            raise openai.APIError(body["message"] or "An error occurred during streaming",
                                  self._http_request(), body=body)
        return True

    def _cut_off(self) -> BaseException | None:
        """The error of a stream whose body ended before its end, or None: a chat stream
        with no finish_reason on any choice and no usage chunk (flowkit asks for one), a
        Responses stream before its terminal event. Its iteration ended quietly, and the
        part of an answer it had was kept as the whole."""
        if self._responses:
            if self._ended:
                return None
            what = "before its response.completed event"
        else:
            if self.finish_reasons or self.summary["usage"] is not None:
                return None
            what = "without a finish_reason, usage or [DONE]"
        read = sum(len(t) for parts in self.choice_parts.values() for t in parts)
        return openai.APIConnectionError(
            message=f"The stream was cut off: it ended {what}, after {read} characters "
                    "(flowkit: raised so that the step's retry runs the call again)",
            request=self._http_request())

    def _http_request(self) -> httpx.Request:
        try:
            return self._stream.response.request
        except (AttributeError, RuntimeError):  # a stream without its HTTP response
            return httpx.Request("POST", "http://unknown.invalid/")

    def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            if error is None or not self._abandoned():  # an abandoned attempt's is refused
                self._batcher.flush()
        finally:
            self._batcher.close()
            self.summary["text"] = "".join(self.text_parts)
            self.summary["output"] = self._output()
            self._on_done(self.summary, error)

    def _output(self) -> Any:
        """What the span records: choice 0's text, or its tool calls; each choice's, as a
        list, when several came (``n > 1``)."""
        choices = sorted(set(self.choice_parts) | set(self.tool_calls)) or [0]

        def of(index: int) -> Any:
            calls = self.tool_calls.get(index)
            if calls:
                return {"tool_calls": [calls[i] for i in sorted(calls)]}
            return "".join(self.choice_parts.get(index, ()))

        return of(0) if choices == [0] else [of(i) for i in choices]

    def _abandoned(self) -> bool:
        """Whether the attempt reading it (the step's, or a timed sub-step's) timed out:
        judged by the attempt that made it, not by the thread that ends it (the step's own,
        at the attempt's end, which a sub-step's timeout does not abandon)."""
        return self._ctx is not None and self._ctx.abandoned_for(self._call)

    def _abandon_error(self) -> BaseException | None:
        """Why the attempt left this stream unfinished, when it failed: it timed out, or its
        code raised (the span said ``ok`` for a call whose answer the failed attempt
        dropped half-read). None when the attempt went on without it (a loop left with
        ``break`` in a step that succeeded, a wait)."""
        if self._abandoned():
            return StepTimeout("the attempt reading it timed out while this stream was read: "
                               "the stream was dropped")
        failure = self._ctx.failure if self._ctx is not None else None
        # a wait, a closed generator, a cancelled task: its stream is closed as it is
        if failure is not None and not isinstance(failure, ATTEMPT_SIGNALS):
            return StepError(f"the step's attempt failed ({describe_error(failure)}) while "
                             "this stream was read: the stream was dropped")
        return None

    def close(self) -> None:
        self._stream.close()
        self._finish(None)

    def _abandon(self) -> None:
        """The attempt ended with this stream unfinished: its connection goes back, and its
        span and the text read so far are recorded (a no-op once it ended); an attempt
        that timed out records it as an error, not as a completion."""
        if not self._done:
            self._stream.close()
            self._finish(self._abandon_error())

    def __enter__(self) -> TracedStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # .response and the rest of the SDK stream
        return getattr(self._stream, name)


class AsyncTracedStream(TracedStream):
    """:class:`TracedStream` over the async SDK's stream (``async for``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:  # made by the SDK's call, on the loop its connection belongs to
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    @staticmethod
    def _iterator(stream: Any) -> Any:
        return stream.__aiter__()

    def __aiter__(self) -> AsyncTracedStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self._it.__anext__()
            except StopAsyncIteration:
                cut = self._cut_off()
                self._finish(cut)
                if cut is not None:
                    raise cut from None
                raise
            except BaseException as exc:
                # the step's timeout cancels the read: its span says so, as a thread's does
                # (it said "CancelledError: ", with no message)
                timed_out = isinstance(exc, asyncio.CancelledError) and self._abandoned()
                self._finish(self._abandon_error() if timed_out else exc)
                raise
            try:
                taken = self._take(chunk)
            except BaseException as exc:  # its text refused (the run was cancelled): stop it
                with contextlib.suppress(Exception):
                    await self._stream.close()
                self._finish(exc)
                raise
            if taken:
                return chunk

    async def close(self) -> None:  # type: ignore[override]
        await self._stream.close()
        self._finish(None)

    def _abandon(self) -> None:
        """The attempt ended with this stream unfinished (a loop left with break, a step
        cancelled between two chunks): record its span and text now, and close its
        connection on the loop it belongs to, which the attempt's end is not running on.
        Left to the garbage collector, the provider went on generating (and billing) it to
        its end."""
        if self._done:
            return
        self._finish(self._abandon_error())
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is closing: it closes its streams
            asyncio.run_coroutine_threadsafe(self._quiet_close(), loop)

    async def _quiet_close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stream.close()

    async def __aenter__(self) -> AsyncTracedStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
