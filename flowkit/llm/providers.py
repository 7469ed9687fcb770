"""Providers: OpenAI-compatible endpoints tried in order, each with its model names and budgets."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import openai

from ..config import get_settings
from ..engine import trace
from ..errors import ConfigError
from ..locks import ForkSafeLock
from ..numbers import is_number
from ..policy import seconds
from . import connections
from .tls import ssl_context


@dataclass(frozen=True)
class RateLimit:
    """A shared budget: requests and tokens per minute; ``burst`` requests may go at once."""

    rpm: float | None = None
    tpm: float | None = None
    #: Largest burst of requests (default: one second's worth, at least 1).
    burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "burst"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and value > 0):
                raise ConfigError(f"RateLimit({name}=...) is a finite number > 0, not {value!r}.")
        if self.rpm is None and self.tpm is None:
            raise ConfigError("RateLimit needs rpm=..., tpm=... or both.")

    @property
    def request_capacity(self) -> float:
        return self.burst or max(1.0, (self.rpm or 0) / 60)

    @property
    def token_capacity(self) -> float:
        # a token bucket holding one second's worth (scaled like the request burst)
        scale = self.request_capacity / max(1.0, (self.rpm or 60) / 60)
        return max(1.0, (self.tpm or 0) / 60 * scale)


def check_timeout(timeout: Any, what: str) -> None:
    """A client's ``timeout``: None, seconds, or the SDK's ``openai.Timeout``, which the
    SDK takes as it is."""
    if timeout is not None and not isinstance(timeout, openai.Timeout):
        try:
            seconds(timeout, what)
        except ConfigError as exc:
            raise ConfigError(f"{str(exc)[:-1]} (or an openai.Timeout(...)).") from None


@dataclass
class Provider:
    """One OpenAI-compatible endpoint.

    ``models`` maps the model a caller asks for to this provider's name for it
    (unmapped names pass through). ``rate_limits`` maps a model (as sent to this
    provider, or ``"*"`` for any) to its shared :class:`RateLimit`.
    """

    name: str
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    models: dict[str, str] = field(default_factory=dict)
    rate_limits: dict[str, RateLimit] = field(default_factory=dict)
    #: Seconds, or the SDK's own ``openai.Timeout(...)`` (connect, read, ... apart).
    timeout: float | openai.Timeout | None = None
    #: Extra keyword arguments for ``openai.OpenAI(...)`` (organization, default_headers, ...).
    options: dict[str, Any] = field(default_factory=dict)
    #: A ready SDK client (``flowkit.llm.wrap``); its own retries are turned off.
    client: openai.OpenAI | None = field(default=None, repr=False)
    #: Who serves this endpoint, as OpenTelemetry's ``gen_ai.provider.name`` says it
    #: (``openai``, ``azure.ai.openai``, ``groq``, ...): traces name it per call.
    system: str = "openai"
    #: The HTTP client under the SDK for requests sent from the process's event loop:
    #: ``"auto"`` (aiohttp where it applies, see :meth:`uses_aiohttp`), ``"aiohttp"`` or
    #: ``"httpx"`` (the SDK's default everywhere, as before).
    transport: str = "auto"

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ConfigError(f"Provider(transport=...) must be one of {TRANSPORTS}, "
                              f"got {self.transport!r}.")
        # a client built with its own HTTP client (proxies, certificates, mounts) keeps it
        self._aiohttp: bool | None = None
        self._own_http = "http_client" in self.options or (
            self.client is not None and not _default_http(self.client)
        )
        if not isinstance(self.name, str) or not self.name or ":" in self.name:
            raise ConfigError(f"Provider name {self.name!r} must be non-empty, without ':'.")
        check_timeout(self.timeout, "Provider(timeout=...)")
        if not isinstance(self.rate_limits, dict) or not all(
                isinstance(model, str) and isinstance(limit, RateLimit)
                for model, limit in self.rate_limits.items()):
            raise ConfigError("rate_limits= maps a model (or '*') to a flowkit.llm.RateLimit, "
                              f"like {{'*': RateLimit(rpm=500)}}, not {self.rate_limits!r}.")
        if not isinstance(self.models, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.models.items()):
            raise ConfigError(f"Provider(models=...) maps the model asked for to this "
                              f"provider's name for it, not {self.models!r}.")
        # The HTTP clients are the process's, shared by endpoint (connections.py): one per
        # provider left a connection open per with_options() or per client made in a step,
        # and the SDK's own loaded the certificates again (27 ms an OpenAI()). An HTTP
        # client of the user's own (proxies, certificates) is kept: it is the only pool.
        self._pools = 1 if self._own_http else max(1, get_settings().llm_connection_pools)
        if self.client is None:
            http = {} if self._own_http else {"http_client": connections.sync_pools(
                self.base_url or os.environ.get("OPENAI_BASE_URL")
                or "https://api.openai.com/v1", 1)[0]}
            self.client = openai.OpenAI(
                api_key=self.api_key, base_url=self.base_url, max_retries=0,
                timeout=self.timeout or get_settings().llm_timeout, **{**http, **self.options},
            )
        else:
            # one logical call must never multiply into the SDK's retries times ours
            self.client = self.client.with_options(max_retries=0)
        # the SDK client over each pool, made when first taken: a with_options() (the SDK's
        # per-request idiom) makes a provider, and most requests never use the sync pools
        self._clients: dict[tuple[int, int], openai.OpenAI] = {}  # by (pid, turn)
        self._turn = itertools.count()
        self._async_clients: dict[asyncio.AbstractEventLoop, openai.AsyncOpenAI] = {}
        self._async_lock = ForkSafeLock()
        if self.uses_aiohttp():
            ssl_context()  # made now, not in the first request's latency
        key = self.client.api_key
        trace.remember_secret(key if isinstance(key, str) else None)
        trace.remember_secret(self.api_key)

    @classmethod
    def from_client(cls, client: openai.OpenAI, name: str | None = None, **kwargs: Any) -> Provider:
        return cls(name or host_of(str(client.base_url)), client=client, **kwargs)

    def sdk_client(self) -> openai.OpenAI:
        """The SDK client for the next request: over one of the process's connection pools
        to this endpoint, taken in turn (the user's own HTTP client, if given)."""
        if self._own_http:
            return self.client
        turn = next(self._turn) % self._pools
        # by process too: a provider made before a fork (a prefork pool's parent) handed its
        # child the SDK clients over the parent's connections
        client = self._clients.get((os.getpid(), turn))
        if client is None:  # two threads may both make it: either will do
            http = connections.sync_pools(self.client.base_url, self._pools)[turn]
            client = self._clients[(os.getpid(), turn)] = self.client.with_options(
                http_client=http)
        return client

    def async_sdk_client(self) -> openai.AsyncOpenAI:
        """The async SDK client for the running event loop, over that loop's HTTP client to
        this endpoint (an HTTP connection belongs to the loop that opened it: flowkit's one
        loop per process, and any loop of the caller's, ``asyncio.run`` in a test). The
        clients of closed loops are dropped."""
        loop = asyncio.get_running_loop()
        with self._async_lock:
            for old in [old for old in self._async_clients if old.is_closed()]:
                del self._async_clients[old]
            client = self._async_clients.get(loop)
            if client is None:
                http = connections.async_http(self.client.base_url, self.uses_aiohttp())
                client = self._async_clients[loop] = self.async_twin(http_client=http)
            return client

    def async_twin(self, **http: Any) -> openai.AsyncOpenAI:
        """An async SDK client of this provider's key, URL, headers and timeout (the SDK's
        retries off): bound to no event loop until it is used (an attribute read outside
        async code, as ``openai.AsyncOpenAI()``'s are)."""
        base = self.client
        return openai.AsyncOpenAI(
            api_key=base.api_key, base_url=base.base_url, organization=base.organization,
            project=base.project, max_retries=0, timeout=base.timeout,
            default_headers=getattr(base, "_custom_headers", None),
            default_query=getattr(base, "_custom_query", None), **http,
        )

    def with_sdk_options(self, options: dict[str, Any]) -> Provider:
        """This provider with its SDK client given ``options`` (``timeout``,
        ``default_headers``, ``http_client``, ...: the SDK's ``with_options``)."""
        timeout = options.get("timeout", self.timeout)
        return dataclasses.replace(self, client=self.client.with_options(**options),
                                   timeout=timeout)

    def uses_aiohttp(self) -> bool:
        """Whether requests from the process's event loop go through aiohttp.

        On the worker's loop the SDK over aiohttp costs about half the CPU per call of
        the SDK over httpx (about 1.3 ms against 3 ms, most of httpx's going to its
        connection pool's bookkeeping with hundreds of calls in flight): what bounds a
        wide fan-out of LLM calls on a few cores. ``"auto"`` uses it unless the provider
        was given an HTTP client of its own, or a proxy is set in the environment (aiohttp,
        unlike httpx, would not use it), or aiohttp is not installed."""
        if self._aiohttp is None:  # decided once (asked for every request)
            if self.transport != "auto":
                self._aiohttp = self.transport == "aiohttp"
            else:
                self._aiohttp = not self._own_http and not _proxied() and _aiohttp_installed()
        return self._aiohttp

    def server(self) -> tuple[str | None, int | None]:
        """The endpoint's host and port (OpenTelemetry's ``server.address``/``server.port``)."""
        url = urlparse(str(self.client.base_url)) if self.client is not None else None
        if url is None or not url.hostname:
            return None, None
        return url.hostname, url.port or (443 if url.scheme == "https" else 80)

    def model_for(self, requested: str) -> str:
        return self.models.get(requested, requested)

    def limit_for(self, model: str) -> RateLimit | None:
        return self.rate_limits.get(model) or self.rate_limits.get("*")


TRANSPORTS = ("auto", "aiohttp", "httpx")


def _default_http(client: openai.OpenAI) -> bool:
    """Whether an SDK client uses the HTTP client the SDK made for it, or the process's shared
    one (not one the user gave it)."""
    default = getattr(openai._base_client, "SyncHttpxClientWrapper", None)
    http = getattr(client, "_client", None)
    return isinstance(http, connections.SharedHttpxClient) or (
        default is not None and isinstance(http, default))


def _proxied() -> bool:
    return any(os.environ.get(name) for name in connections.PROXY_VARS)


@functools.lru_cache(maxsize=1)
def _aiohttp_installed() -> bool:
    """aiohttp, and an SDK with its aiohttp transport (openai's ``[aiohttp]`` extra)."""
    try:
        from . import transport  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def host_of(url: str) -> str:
    return (urlparse(url).hostname or "openai").replace(":", "_")
