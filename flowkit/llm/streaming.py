"""Token streaming: chunks go to the run's stream in batches while the caller iterates.

A batch is flushed once it holds ``LLM_STREAM_FLUSH_CHARS`` characters or its
first token is ``LLM_STREAM_FLUSH_SECONDS`` old, so a reader sees text appear
smoothly without one Redis write per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..config import get_settings
from ..engine.step import StepContext


class ChunkBatcher:
    """Collects text and sends it as ``step.output`` chunks of the running step."""

    def __init__(self, ctx: StepContext | None) -> None:
        settings = get_settings()
        self.ctx = ctx
        self.max_chars = settings.llm_stream_flush_chars
        self.max_delay = settings.llm_stream_flush_seconds
        self._parts: list[str] = []
        self._size = 0
        self._since = 0.0

    def add(self, text: str) -> None:
        if not text or self.ctx is None:
            return
        if not self._parts:
            self._since = time.monotonic()
        self._parts.append(text)
        self._size += len(text)
        if self._size >= self.max_chars or time.monotonic() - self._since >= self.max_delay:
            self.flush()

    def flush(self) -> None:
        if self._parts and self.ctx is not None:
            text = "".join(self._parts)
            self._parts, self._size = [], 0
            self.ctx.emit(text)


class TracedStream:
    """The SDK's stream, passed through chunk by chunk, teeing text to the run's stream.

    ``on_done(summary, error)`` runs once, when the stream ends, fails or is closed.
    Usage-only chunks the caller did not ask for (``include_usage``) are hidden. A
    Responses stream (``responses=True``) tees its ``response.output_text.delta`` events
    and takes usage, model and id from its ``response.completed`` event.
    """

    def __init__(
        self, stream: Any, ctx: StepContext | None, started: float, hide_usage_chunk: bool,
        on_done: Callable[[dict[str, Any], BaseException | None], None],
        responses: bool = False,
    ) -> None:
        self._stream = stream
        self._it = self._iterator(stream)
        self._batcher = ChunkBatcher(ctx)
        self._started = started
        self._hide_usage = hide_usage_chunk
        self._on_done = on_done
        self._done = False
        self._take = self._take_event if responses else self._take_chunk
        self.text_parts: list[str] = []
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
                self._finish(None)
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

    def _text(self, text: str) -> None:
        if self.summary["ttft"] is None:
            self.summary["ttft"] = time.monotonic() - self._started
        self.text_parts.append(text)
        self._batcher.add(text)

    def _take_chunk(self, chunk: Any) -> bool:
        """Record a Chat Completions chunk; False hides it from the caller."""
        if getattr(chunk, "usage", None) is not None:
            self.summary["usage"] = chunk.usage
        if not self.summary.get("model"):  # the model and id the server answered with
            self.summary["model"] = getattr(chunk, "model", None)
            self.summary["id"] = getattr(chunk, "id", None)
        for choice in chunk.choices or ():
            content = getattr(choice.delta, "content", None)
            if content:
                self._text(content)
            if choice.finish_reason:
                self.summary["finish_reason"] = choice.finish_reason
        return bool(chunk.choices) or not self._hide_usage

    def _take_event(self, event: Any) -> bool:
        """Record a Responses stream event (every one reaches the caller)."""
        kind = getattr(event, "type", "")
        if kind == "response.output_text.delta" and event.delta:
            self._text(event.delta)
        elif kind in ("response.completed", "response.incomplete", "response.failed"):
            response = event.response
            self.summary.update(usage=response.usage, model=response.model, id=response.id,
                                finish_reason=response.status)
        return True

    def _finish(self, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._batcher.flush()
        finally:
            self.summary["text"] = "".join(self.text_parts)
            self._on_done(self.summary, error)

    def close(self) -> None:
        self._stream.close()
        self._finish(None)

    def _abandon(self) -> None:
        """The attempt ended with this stream unfinished: its connection goes back, and its
        span and the text read so far are recorded (a no-op once it ended)."""
        if not self._done:
            self.close()

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
                self._finish(None)
                raise
            except BaseException as exc:
                self._finish(exc)
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
        self._finish(None)
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
