"""The SDK's aiohttp transport, with httpx's own errors for connections that fail.

flowkit sends non-streaming requests of the sync client, and every request of the
async client, on the worker's event loop through ``openai.DefaultAioHttpClient``
(the SDK's own aiohttp transport, see Provider.uses_aiohttp): with hundreds of calls
in flight it costs about half the CPU per call of httpx, whose connection pool scans
every connection on each request and response.

The transport the SDK vendors (httpx-aiohttp 0.2) reports every failed connection as
a timeout: ``aiohttp.ClientConnectionError`` maps to ``httpx.ConnectTimeout``, so a
refused connection or a server that hangs up becomes the SDK's ``APITimeoutError``
("Request timed out.") where httpx says ``APIConnectionError``. Traces, failover
reasons and the caller's ``except`` clauses would all read a timeout that never
happened. This subclass hands the SDK the errors httpx raises for the same failures:
a timeout stays a timeout; a connection that could not be made is ``ConnectError``;
one the server closed is ``RemoteProtocolError`` (or ``ReadError`` mid-body).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import openai
from openai._constants import DEFAULT_CONNECTION_LIMITS, DEFAULT_TIMEOUT
from openai._vendor.httpx_aiohttp import AiohttpTransport

from .tls import ssl_context


def aiohttp_client() -> Any:
    """An HTTP client for ``openai.AsyncOpenAI(http_client=...)``: the SDK's
    ``DefaultAioHttpClient`` (its timeout and connection limits) over :class:`Transport`,
    shared by the SDK clients of the process's loop (see connections.py)."""
    return SharedAioHttpClient(
        transport=Transport(verify=ssl_context(), limits=DEFAULT_CONNECTION_LIMITS),
        timeout=DEFAULT_TIMEOUT,
    )


class SharedAioHttpClient(openai.DefaultAioHttpClient):
    """The SDK's aiohttp client, whose ``aclose()`` leaves it open for the process's other
    SDK clients; the process closes it at exit (``close_for_good``)."""

    async def aclose(self) -> None:
        """Left open for the other clients (see connections.py)."""

    async def close_for_good(self) -> None:
        await super().aclose()


class Transport(AiohttpTransport):
    """The SDK's aiohttp transport, raising httpx's errors for failed connections."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx2.TransportError as exc:
            raise _as_httpx(exc, before_response=True) from exc.__cause__
        response.stream = _Body(response.stream)
        return response


class _Body(httpx2.AsyncByteStream):
    """A response body whose read errors are httpx's too."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpx2.TransportError as exc:
            raise _as_httpx(exc, before_response=False) from exc.__cause__

    async def aclose(self) -> None:
        await self._stream.aclose()


def _as_httpx(exc: httpx2.TransportError, *, before_response: bool) -> httpx2.TransportError:
    """The error httpx raises where aiohttp raised ``exc.__cause__`` (``exc`` if it was
    mapped right: a timeout, a payload error, an unsupported URL)."""
    cause = exc.__cause__
    if not isinstance(cause, aiohttp.ClientConnectionError) or isinstance(cause, asyncio.TimeoutError):
        return exc
    message = str(cause) or type(cause).__name__
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message, request=_request_of(exc))
    if before_response and isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx2.RemoteProtocolError(message, request=_request_of(exc))
    return httpx2.ReadError(message, request=_request_of(exc))


def _request_of(exc: httpx2.TransportError) -> httpx2.Request | None:
    try:
        return exc.request
    except RuntimeError:  # httpx raises when the error was made without its request
        return None
