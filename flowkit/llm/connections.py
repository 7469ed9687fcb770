"""The HTTP clients under the providers' SDK clients: one set per endpoint, shared by the process.

A flowkit client is cheap to make and is often made per call: ``client.with_options(timeout=30)``
is the SDK's per-request idiom, and a step that builds its ``OpenAI()`` makes one per step.
Each used to bring HTTP clients of its own: an aiohttp session on the process's event loop,
held until exit so aiohttp would not complain of it left open, and 32 httpx pools (about
3 ms a ``with_options``). A worker kept one more idle connection to the LLM per step until it
ran out of file descriptors ("Too many open files"). An HTTP client holds nothing of a
caller's: the SDK sends each request's URL, key, headers and timeout with the request. So the
HTTP clients are shared by what makes a connection differ: the endpoint (scheme, host, port)
and the proxy settings of the environment; TLS settings are the process's one context
(tls.py). The SDK clients over them (key, headers, timeout) stay the providers' own.

- Sync requests (streams, ``transport="httpx"``): ``FLOWKIT_LLM_CONNECTION_POOLS`` httpx
  clients per endpoint, made once per process. A forked child makes its own: a connection
  its parent opened must not carry the requests of both.
- Async requests: one HTTP client per endpoint and event loop (a connection belongs to the
  loop that opened it). On the process's loop, which is made again in a forked child, it is
  closed at exit; on a loop of one step it is closed with the loop; a caller's own loop
  drops it when that loop is closed.

A shared client's own ``close()``/``aclose()`` does nothing: ``client.close()``, which a
flowkit client hands to its first provider's SDK client, would close it for every client of
the process. The process closes it, as said above.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx2
import openai

from ..coroutines import close_at_exit, close_with_loop, shared_loop
from ..locks import ForkSafeLock
from .tls import ssl_context

#: The environment's proxy settings: httpx reads them when an HTTP client is made.
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
_NO_PROXY_VARS = ("NO_PROXY", "no_proxy")

_lock = ForkSafeLock()
_sync: dict[Any, list[Any]] = {}  # {(pid, endpoint): [httpx clients]}
_async: dict[asyncio.AbstractEventLoop, dict[Any, Any]] = {}  # {loop: {(kind, endpoint): client}}


class SharedHttpxClient(openai.DefaultHttpxClient):
    """The SDK's default sync HTTP client, shared by the process's SDK clients."""

    def close(self) -> None:
        """Left open for the other clients of the process (see the module's docstring)."""


class SharedAsyncHttpxClient(openai.DefaultAsyncHttpxClient):
    """The SDK's default async HTTP client, shared by the SDK clients of one event loop."""

    async def aclose(self) -> None:
        """Left open for the other clients of the loop (see the module's docstring)."""

    async def close_for_good(self) -> None:
        await super().aclose()


def endpoint(url: Any) -> tuple[Any, ...]:
    """What makes a connection to ``url`` differ from another's."""
    url = httpx2.URL(str(url))
    proxies = tuple(os.environ.get(name) for name in PROXY_VARS + _NO_PROXY_VARS)
    return url.scheme, url.host, url.port, proxies


def sync_pools(url: Any, count: int) -> list[Any]:
    """``count`` httpx clients for requests to ``url``'s endpoint from this process: the
    connection pool scans all its connections on every request and response, so hundreds
    of concurrent calls through one pool cost O(n^2); a few, taken in turn, stay small."""
    key = (os.getpid(), endpoint(url))
    pools = _sync.get(key)
    if pools is None or len(pools) < count:
        with _lock:
            pid = os.getpid()
            for old in [old for old in _sync if old[0] != pid]:
                del _sync[old]  # a parent's, before a fork: left to it, not closed here
            pools = _sync.setdefault(key, [])
            pools.extend(SharedHttpxClient(verify=ssl_context())
                         for _ in range(count - len(pools)))
    return pools[:count]


def async_http(url: Any, aiohttp: bool) -> Any:
    """The HTTP client for requests to ``url``'s endpoint from the running event loop:
    aiohttp's (see Provider.uses_aiohttp) on the process's loop, else httpx's."""
    loop = asyncio.get_running_loop()
    shared = loop is shared_loop()
    kind = "aiohttp" if shared and aiohttp else "httpx"
    key = (kind, endpoint(url))
    with _lock:
        for old in [old for old in _async if old.is_closed()]:
            del _async[old]  # its connections went with it
        clients = _async.setdefault(loop, {})
        http = clients.get(key)
        if http is None:
            if kind == "aiohttp":
                from .transport import aiohttp_client  # openai's aiohttp extra

                http = aiohttp_client()
            else:  # the process's TLS context, not the certificates loaded again
                http = SharedAsyncHttpxClient(verify=ssl_context())
            clients[key] = http
            if shared:
                close_at_exit(http.close_for_good)  # aiohttp complains of a session left open
            else:
                close_with_loop(http.close_for_good)  # a loop of one call: its connections too
    return http
