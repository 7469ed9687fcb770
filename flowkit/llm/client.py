"""An OpenAI client with the SDK's surface, made durable: retries, failover, shared budgets, traces.

Adopt it by changing one import (``from flowkit.llm import OpenAI``, or
``AsyncOpenAI`` in async code) or by wrapping a client you have
(``flowkit.llm.wrap(openai.OpenAI(...))``). ``chat.completions.create`` (with
``stream=True``, tools and response formats), ``chat.completions.parse``,
``responses.create`` (with ``stream=True``), ``responses.parse`` and
``embeddings.create`` return the SDK's own objects, and so do their
``with_raw_response`` twins, the client's own (``client.with_raw_response.chat...``)
too (the raw response: headers, ``parse()``); every other
attribute is the first provider's SDK client, unwrapped (a debug-level log line says so).

One logical call: for each provider in order, wait for its shared rate-limit
budget, send the request (the SDK's own retries are off) and retry transient
failures with backoff honouring ``Retry-After``; when a provider stays down or
saturated, move to the next. Inside a run the call is recorded as a trace span,
and streamed tokens reach the run's stream as ``step.output`` chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import re
import time
from typing import Any

import openai
import tenacity
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from .. import defaults, hooks
from ..config import get_settings
from ..context import current
from ..coroutines import can_wait_for_loop, on_process_loop
from ..engine import cache, trace
from ..errors import (
    ConfigError,
    RateLimitWait,
    RunCancelled,
    StoreUnavailable,
    describe_error,
    mark_final,
)
from ..numbers import is_whole
from ..policy import seconds
from ..store import get_store
from . import pricing
from .providers import Provider, RateLimit, check_timeout, host_of
from .ratelimit import RateLimiter
from .retries import RetryPolicy, explain_unwaited, is_out_of_quota, is_retryable, refused_here
from .streaming import AsyncTracedStream, TracedStream

log = logging.getLogger(__name__)

CHAT = "chat.completions"
CHAT_PARSE = "chat.completions.parse"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"
RESPONSES_PARSE = "responses.parse"
#: The SDK method each operation calls.
_SDK_METHODS = {
    CHAT: "chat.completions.create", CHAT_PARSE: "chat.completions.parse",
    EMBEDDINGS: "embeddings.create", RESPONSES: "responses.create",
    RESPONSES_PARSE: "responses.parse",
}
_CHATS = (CHAT, CHAT_PARSE)
_RESPONSES = (RESPONSES, RESPONSES_PARSE)
#: Operations whose answers the cache keeps (a parsed answer's type is the caller's).
_RESPONSE_TYPES = {CHAT: ChatCompletion, EMBEDDINGS: CreateEmbeddingResponse, RESPONSES: Response}
#: Request parameters kept out of a span's ``request`` (recorded apart, or never: headers).
_CONTENT_PARAMS = ("messages", "input", "extra_headers", "extra_query", "extra_body")


class _Client:
    """What the sync and async clients share: providers, policies, and a call's steps
    before and after the request (cache, failover bookkeeping, trace span)."""

    _kind = "OpenAI"

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        providers: list[Provider] | None = None,
        rate_limits: dict[str, RateLimit] | None = None,
        retry: RetryPolicy | None = None,
        cache_ttl: float | None = None,
        timeout: float | openai.Timeout | None = None,
        name: str | None = None,
        transport: str | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> None:
        if max_retries is not None:  # the SDK's argument: flowkit's own retries take it
            if retry is not None:
                raise ConfigError(f"{self._kind}(max_retries=...) and retry=RetryPolicy(...) "
                                  "say the same: give one of them.")
            retry = RetryPolicy(attempts=_attempts(max_retries, self._kind))
        if rate_limits is not None and not isinstance(rate_limits, dict):
            raise ConfigError("rate_limits= maps a model (or '*') to a flowkit.llm.RateLimit, "
                              f"like {{'*': RateLimit(rpm=500)}}, not {rate_limits!r}.")
        check_timeout(timeout, f"{self._kind}(timeout=...)")
        if providers is None:
            url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
            providers = [Provider(
                name or host_of(url), base_url=url, api_key=api_key,
                rate_limits=dict(rate_limits or {}), timeout=timeout, options=options,
                transport=transport or "auto",
            )]
        elif api_key or base_url or rate_limits or options or transport:
            raise ConfigError("Give either providers=[...] or api_key/base_url/rate_limits/"
                              "transport, not both.")
        if isinstance(providers, Provider) or not isinstance(providers, (list, tuple)) \
                or not all(isinstance(p, Provider) for p in providers):
            raise ConfigError(f"{self._kind}(providers=...) takes a list of "
                              f"flowkit.llm.Provider(...), not {providers!r}.")
        if not providers:
            raise ConfigError(f"{self._kind}(providers=[...]) needs at least one provider.")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"{self._kind}(retry=...) takes a flowkit.llm.RetryPolicy(...), "
                              f"like RetryPolicy(attempts=3), not {retry!r}.")
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ConfigError(f"Provider names must be unique, got {names}.")
        if cache_ttl is not None:
            seconds(cache_ttl, f"{self._kind}(cache_ttl=...)")
        self.providers = list(providers)
        self.retry = retry or RetryPolicy()
        self.cache_ttl = cache_ttl
        self.limiter = RateLimiter()
        self.chat = _Chat(self)
        self.embeddings = _Resource(self, "embeddings", create=EMBEDDINGS)
        self.responses = _Resource(self, "responses", create=RESPONSES, parse=RESPONSES_PARSE)

    def _sdk(self) -> Any:
        """The first provider's SDK client, for the attributes flowkit does not wrap."""
        return self.providers[0].client

    def __getattr__(self, name: str) -> Any:
        # models, files, batches, ...: the first provider's own SDK resources
        if name.startswith("_") or name == "providers":
            raise AttributeError(name)
        return _unwrapped(self._sdk(), name, name)

    def __repr__(self) -> str:
        return f"<flowkit.llm.{self._kind} providers={[p.name for p in self.providers]}>"

    @property
    def with_raw_response(self) -> _RawClient:
        """The SDK's ``client.with_raw_response``: its ``chat.completions``, ``responses``
        and ``embeddings`` are those resources' ``with_raw_response`` (the same retries,
        failover, rate limits and trace span); anything else is the SDK's, unwrapped."""
        return _RawClient(self)

    def with_options(self, **options: Any) -> Any:
        """The SDK's ``with_options`` (and ``copy``): this client with each provider's SDK
        client given ``options`` (``timeout``, ``default_headers``, ``http_client``, ...),
        keeping its providers, failover, rate limits, cache and trace spans;
        ``max_retries=N`` is N + 1 attempts per provider (flowkit retries; the SDK's own
        retries stay off). It returned the bare SDK client, without any of them."""
        retry = self.retry
        if "max_retries" in options:
            retry = dataclasses.replace(retry, attempts=_attempts(options.pop("max_retries"),
                                                                  "with_options"))
        if "timeout" in options:
            check_timeout(options["timeout"], f"{self._kind}.with_options(timeout=...)")
        clone = copy.copy(self)  # the same rate limiter: one budget for both
        clone.retry = retry
        if options:
            clone.providers = [p.with_sdk_options(options) for p in self.providers]
        clone.chat = _Chat(clone)
        clone.embeddings = _Resource(clone, "embeddings", create=EMBEDDINGS)
        clone.responses = _Resource(clone, "responses", create=RESPONSES,
                                    parse=RESPONSES_PARSE)
        return clone

    copy = with_options

    # -- the steps of one logical call around its requests ----------------------------

    def _begin(self, operation: str, kwargs: dict[str, Any],
               raw: bool = False) -> tuple[_Call, str | None, Any]:
        """The call's record, its cache key, and the cached answer (or None)."""
        requested = kwargs.get("model")
        if not isinstance(requested, str) or not requested:
            raise TypeError(f"{_SDK_METHODS[operation]}() needs model='...'.")
        call = _Call(operation, requested, kwargs, raw)
        cache_key = None if raw else self._cache_key(operation, kwargs)
        if cache_key:
            hit = cache.get(get_store(), cache_key)
            if hit is not None:
                # leniently, as the SDK reads answers: a field a server left out stays None
                response = _RESPONSE_TYPES[operation].construct(**json.loads(hit))
                call.finish_response(None, response, cached=True)
                return call, cache_key, response
        return call, cache_key, None

    @staticmethod
    def _fails_over(provider: Provider, call: _Call, exc: BaseException) -> bool:
        """Whether the next provider gets the call after ``exc`` (else it is the answer)."""
        if not isinstance(exc, RateLimitWait) and not is_retryable(exc) \
                and not refused_here(exc):
            if isinstance(exc, openai.APIStatusError):  # a 400, 422: the request itself
                mark_final(exc, f"HTTP {exc.status_code} cannot succeed if sent again")
            call.fail(provider, exc)
            return False
        # its retries are that provider's: the metrics and the trace charged them to the one
        # that answered, so an alert on the flaky provider's retries blamed the backup
        call.failures.append({"provider": provider.name, "error": describe_error(exc),
                              "retries": call.retries - call.retries_before})
        call.retries_before = call.retries
        return True

    def _failed_otherwise(self, provider: Provider, call: _Call, exc: Exception) -> None:
        """A call that failed with no API error: the answer came and the SDK refused it (a
        ``parse`` cut at its length limit, a body that was no JSON). It was sent, and maybe
        billed: its span says so, with the usage the answer had (it had none). Not a
        refused argument (TypeError: nothing was sent), nor a cancel before anything was
        sent; one while it waited to retry is its span's error (a request was sent, a 429
        answered: it left no span)."""
        if isinstance(exc, TypeError) or (isinstance(exc, RunCancelled) and not call.retries):
            return
        usage = getattr(getattr(exc, "completion", None), "usage", None)
        self._settle(provider, call, usage)
        call.fail(provider, exc, usage)

    def _unspent(self, provider: Provider, call: _Call, model: str, exc: BaseException) -> None:
        """An attempt the provider answered with an error status (a 429, a 5xx, a 400), or
        that never reached it (a refused or dropped connection), generated nothing: its
        estimate goes back to the shared token budget. Each one was kept, and only the final
        answer settled: retries and every other worker waited for tokens never spent. A
        timeout keeps its estimate: the provider may have spent the tokens all the same."""
        if call.estimate and isinstance(exc, (openai.APIStatusError, openai.APIConnectionError)) \
                and not isinstance(exc, openai.APITimeoutError):
            # the provider's error is the one to retry or report, not Redis's
            with contextlib.suppress(StoreUnavailable):
                self.limiter.settle(provider.name, model, call.estimate, 0)

    def _give_up(self, call: _Call, exc: BaseException) -> None:
        """Every provider failed: the last one's error is the call's, recorded on its span
        under that provider (it read ``provider: None``, and a single provider's own
        failure was listed as a failover to nowhere)."""
        provider = self.providers[-1]
        if call.failures and call.failures[-1]["provider"] == provider.name:
            call.failures.pop()
        explain_unwaited(exc, self.retry)
        if is_out_of_quota(exc):
            mark_final(exc, "the provider's quota is spent (insufficient_quota)")
        elif refused_here(exc):
            mark_final(exc, f"HTTP {exc.status_code} cannot succeed if sent again")
        call.fail(provider, exc)

    def _request(self, provider: Provider, call: _Call, sdk: Any) -> tuple[Any, RateLimit | None, dict]:
        """The SDK method to call on ``sdk``, the budget it draws on, and its parameters."""
        model = provider.model_for(call.requested)
        limit = provider.limit_for(model)
        call.estimate = estimate_tokens(call.operation, call.kwargs) if limit and limit.tpm else 0
        params = {**call.kwargs, "model": model}
        if call.stream and call.operation == CHAT and not call.user_wants_usage:
            params["stream_options"] = {**(params.get("stream_options") or {}), "include_usage": True}
        return _method(sdk, call.operation, call.raw), limit, params

    def _before_send(self, attempt: Any, call: _Call) -> None:
        if attempt.retry_state.attempt_number > 1:
            call.retries += 1  # tenacity slept before this one
            # A sync step's thread sleeps out a Retry-After even once its run is cancelled
            # (Python cannot stop it): the retry then sent a whole completion, paid for.
            step = current()
            if step is not None and step.is_cancelled():
                raise RunCancelled("The run was cancelled while this LLM call waited to "
                                   "retry: it is not sent again.")

    def _end(self, provider: Provider, call: _Call, response: Any, cache_key: str | None,
             stream_type: type[TracedStream]) -> Any:
        """The answer handed back: the traced stream, or the response (recorded, cached)."""
        if call.stream:
            def done(summary: dict[str, Any], error: BaseException | None) -> None:
                self._settle(provider, call, summary.get("usage"))
                call.finish_stream(provider, summary, error)

            return stream_type(response, current(), call.sent,
                               call.operation == CHAT and not call.user_wants_usage, done,
                               responses=call.operation in _RESPONSES)
        # a raw response's parse() is the SDK's object (it keeps it: the caller's is free)
        answer = response.parse() if call.raw else response
        call.finish_response(provider, answer)
        self._settle(provider, call, getattr(answer, "usage", None))
        if cache_key:
            cache.put(get_store(), cache_key, answer.model_dump_json(), self.cache_ttl)
        return response

    def _settle(self, provider: Provider, call: _Call, usage: Any) -> None:
        if call.estimate and usage is not None:
            model = provider.model_for(call.requested)
            self.limiter.settle(provider.name, model, call.estimate, int(usage.total_tokens or 0))

    def _cache_key(self, operation: str, kwargs: dict[str, Any]) -> str | None:
        if not self.cache_ttl or kwargs.get("stream") or operation not in _RESPONSE_TYPES:
            return None
        if operation != EMBEDDINGS and kwargs.get("temperature") != 0:
            return None  # only a deterministic request has one right answer to store
        # the request alone was the key: a client of another server, account or model
        # mapping was answered with this one's stored reply, and never asked its own
        identity = {"providers": self._identity(kwargs["model"]), "request": kwargs}
        return cache.key(f"flowkit.llm.{operation}", "2", identity)

    def _identity(self, requested: str) -> list[list[Any]]:
        """Who answers a request for ``requested``, provider by provider (any of them may):
        its name, URL, the model it is sent as, and the organization and project it is
        made under (another account's models, fine-tunes and settings). Not its API key: a
        key rotated would empty the cache, and keys of one account get one answer."""
        return [[p.name, str(p.client.base_url), p.model_for(requested),
                 p.client.organization, p.client.project] for p in self.providers]


class OpenAI(_Client):
    """``openai.OpenAI``'s surface over one or more providers.

    ``OpenAI(api_key=..., base_url=...)`` makes one provider; ``providers=[...]``
    gives a failover list. ``cache_ttl`` stores answers of deterministic calls
    (``temperature=0`` chats and responses, not ``parse``; embeddings) in the component
    cache for that many seconds. A request that does not stream is sent by the SDK's async twin
    over aiohttp on the process's event loop, for about half the CPU of the sync SDK's
    httpx (``transport="httpx"`` keeps httpx; see :attr:`Provider.transport`); the
    caller waits, and gets the sync SDK's types and errors.
    """

    def _create(self, operation: str, kwargs: dict[str, Any], raw: bool = False) -> Any:
        call, cache_key, hit = self._begin(operation, kwargs, raw)
        if hit is not None:
            return hit
        last: BaseException | None = None
        for provider in self.providers:
            try:
                response = self._on_provider(provider, call)
            except (RateLimitWait, openai.APIError) as exc:
                if not self._fails_over(provider, call, exc):
                    raise
                last = exc
                continue
            except Exception as exc:
                self._failed_otherwise(provider, call, exc)
                raise
            return self._end(provider, call, response, cache_key, TracedStream)
        assert last is not None
        self._give_up(call, last)
        raise last

    def _on_provider(self, provider: Provider, call: _Call) -> Any:
        send, limit, params = self._request(provider, call, provider.sdk_client())
        if not call.stream and not call.raw and provider.uses_aiohttp() and can_wait_for_loop():
            send = functools.partial(_send_on_loop, provider, call.operation)
        for attempt in self.retry.retrying():
            with attempt:
                self._before_send(attempt, call)
                if limit is not None:
                    call.rate_wait += self.limiter.acquire(
                        provider.name, params["model"], limit, call.estimate,
                        get_settings().llm_rate_max_wait,
                    )
                call.sent = time.monotonic()
                try:
                    return send(**params)
                except openai.APIError as exc:
                    self._unspent(provider, call, params["model"], exc)
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")


def _send_on_loop(provider: Provider, operation: str, **params: Any) -> Any:
    """The SDK's request, sent by its async twin over aiohttp on the process's event loop
    (see Provider.uses_aiohttp): the same method, parameters, errors and return type as
    the sync SDK's, for about half its CPU. The caller's greenlet or thread waits; its
    retries, rate limits and span stay here. A stream stays on the sync SDK: its chunks
    are read by the caller as they come."""
    try:
        return on_process_loop(lambda: _method(provider.async_sdk_client(), operation)(**params))
    except TypeError as exc:  # a bad argument: said as the sync SDK says it, not its twin
        said = _ASYNC_CALL.sub(r"\1(", str(exc))
        if said != str(exc):
            raise TypeError(said) from None
        raise


#: The async twin's method in a TypeError ("AsyncCompletions.create() got an unexpected
#: keyword argument 'x'"): the caller called the sync client's.
_ASYNC_CALL = re.compile(r"\bAsync(\w+\.\w+)\(")


class AsyncOpenAI(_Client):
    """``openai.AsyncOpenAI``'s surface over one or more providers: :class:`OpenAI`'s
    twin for async code (``await client.responses.create(...)``, ``async for`` over a
    stream), with the same retries (``asyncio.sleep`` between them), failover, shared
    rate limits, token streaming, cache and trace spans."""

    _kind = "AsyncOpenAI"

    def _sdk(self) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # an attribute read outside async code (client.api_key, .models)
            return self.providers[0].async_twin()
        return self.providers[0].async_sdk_client()

    async def _create(self, operation: str, kwargs: dict[str, Any], raw: bool = False) -> Any:
        step = current()
        if step is not None:  # one of several gathered: cancelled when its attempt ends
            step.end_with_attempt(asyncio.current_task())
        call, cache_key, hit = self._begin(operation, kwargs, raw)
        if hit is not None:
            return hit
        last: BaseException | None = None
        for provider in self.providers:
            try:
                response = await self._on_provider(provider, call)
            except (RateLimitWait, openai.APIError) as exc:
                if not self._fails_over(provider, call, exc):
                    raise
                last = exc
                continue
            except Exception as exc:
                self._failed_otherwise(provider, call, exc)
                raise
            return self._end(provider, call, response, cache_key, AsyncTracedStream)
        assert last is not None
        self._give_up(call, last)
        raise last

    async def _on_provider(self, provider: Provider, call: _Call) -> Any:
        send, limit, params = self._request(provider, call, provider.async_sdk_client())
        policy = self.retry.retrying()
        retrying = tenacity.AsyncRetrying(stop=policy.stop, wait=policy.wait, retry=policy.retry,
                                          reraise=True)
        async for attempt in retrying:
            with attempt:
                self._before_send(attempt, call)
                if limit is not None:
                    call.rate_wait += await self.limiter.acquire_async(
                        provider.name, params["model"], limit, call.estimate,
                        get_settings().llm_rate_max_wait,
                    )
                call.sent = time.monotonic()
                try:
                    return await send(**params)
                except openai.APIError as exc:
                    self._unspent(provider, call, params["model"], exc)
                    raise
        raise AssertionError("unreachable: tenacity re-raises the last error")


class _Resource:
    """``client.<path>``: the wrapped methods (``create``, ``parse``) go through the
    client's call; any other attribute is the SDK's own, unwrapped."""

    def __init__(self, client: _Client, path: str, **operations: str) -> None:
        self._client = client
        self._path = path
        self._operations = operations

    def create(self, **kwargs: Any) -> Any:
        """The SDK's ``create``: its own return type (a stream with ``stream=True``)."""
        return self._client._create(self._operations["create"], kwargs)

    def parse(self, **kwargs: Any) -> Any:
        """The SDK's ``parse``: structured output parsed into the pydantic model given as
        ``response_format=`` (chat) or ``text_format=`` (responses)."""
        if "parse" not in self._operations:
            raise AttributeError(f"{self._path}.parse")
        return self._client._create(self._operations["parse"], kwargs)

    @property
    def with_raw_response(self) -> _RawResource:
        """The SDK's ``with_raw_response``: ``create`` and ``parse`` return its raw response
        (``headers``, ``http_response``, ``parse()``) through the same retries, failover,
        rate limits and trace span; a stream (``stream=True``) is the SDK's, unwrapped."""
        return _RawResource(self)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        sdk = functools.reduce(getattr, self._path.split("."), self._client._sdk())
        return _unwrapped(sdk, name, f"{self._path}.{name}")


class _RawResource:
    """``client.<path>.with_raw_response``."""

    def __init__(self, resource: _Resource) -> None:
        self._resource = resource

    def create(self, **kwargs: Any) -> Any:
        return self._call("create", kwargs)

    def parse(self, **kwargs: Any) -> Any:
        if "parse" not in self._resource._operations:
            raise AttributeError(f"{self._resource._path}.with_raw_response.parse")
        return self._call("parse", kwargs)

    def _call(self, method: str, kwargs: dict[str, Any]) -> Any:
        if kwargs.get("stream"):  # its parse() is the SDK's stream, read by the caller
            path = f"{self._resource._path}.with_raw_response.{method}"
            return _unwrapped(self._sdk(), method, f"{path} with stream=True")(**kwargs)
        return self._resource._client._create(self._resource._operations[method], kwargs, True)

    def _sdk(self) -> Any:
        path = f"{self._resource._path}.with_raw_response"
        return functools.reduce(getattr, path.split("."), self._resource._client._sdk())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _unwrapped(self._sdk(), name, f"{self._resource._path}.with_raw_response.{name}")


class _RawClient:
    """``client.with_raw_response``."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self.chat = _RawChat(client)
        self.responses = client.responses.with_raw_response
        self.embeddings = client.embeddings.with_raw_response

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _unwrapped(self._client._sdk().with_raw_response, name, f"with_raw_response.{name}")


class _RawChat:
    """``client.with_raw_response.chat``."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self.completions = client.chat.completions.with_raw_response

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _unwrapped(self._client._sdk().with_raw_response.chat, name,
                          f"with_raw_response.chat.{name}")


class _Chat:
    def __init__(self, client: _Client) -> None:
        self._client = client
        self.completions = _Resource(client, "chat.completions", create=CHAT, parse=CHAT_PARSE)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _unwrapped(self._client._sdk().chat, name, f"chat.{name}")


def _unwrapped(owner: Any, name: str, path: str) -> Any:
    log.debug("flowkit.llm: client.%s is the SDK's own, unwrapped: no retries, failover, "
              "rate limits, token streaming, cache or trace span", path)
    return getattr(owner, name)


def _method(client: Any, operation: str, raw: bool = False) -> Any:
    """The SDK method of ``operation`` on ``client`` (its ``with_raw_response`` twin)."""
    resource, _, name = _SDK_METHODS[operation].rpartition(".")
    path = f"{resource}.with_raw_response.{name}" if raw else _SDK_METHODS[operation]
    return functools.reduce(getattr, path.split("."), client)


def estimate_tokens(operation: str, kwargs: dict[str, Any]) -> int:
    """Tokens a request will use, roughly (4 characters a token), for the rate limiter."""
    if operation in _CHATS:
        content: Any = kwargs.get("messages")
    else:
        content = [kwargs.get("instructions"), kwargs.get("input")]
    chars = len(str(content or ""))
    completion = 0
    if operation != EMBEDDINGS:
        completion = int(
            kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
            or kwargs.get("max_output_tokens") or get_settings().llm_completion_estimate
        )
    return chars // 4 + 1 + completion


# -- the trace span of one call ------------------------------------------------------------


class _Call:
    """What one logical call did, recorded as an ``llm`` span when inside a run."""

    def __init__(self, operation: str, requested: str, kwargs: dict[str, Any],
                 raw: bool = False) -> None:
        self.operation = operation
        self.requested = requested
        self.kwargs = kwargs
        #: ``with_raw_response``: the SDK's raw response is the answer (never cached)
        self.raw = raw
        self.stream = bool(kwargs.get("stream"))
        self.user_wants_usage = bool((kwargs.get("stream_options") or {}).get("include_usage"))
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.sent = self.started
        self.retries = 0
        #: the retries made on the providers failed over from (``failures`` splits them)
        self.retries_before = 0
        self.rate_wait = 0.0
        self.estimate = 0
        self.failures: list[dict[str, str]] = []

    def _span(self, provider: Provider | None) -> dict[str, Any]:
        request = {k: _shown_param(v) for k, v in self.kwargs.items() if k not in _CONTENT_PARAMS}
        if "tools" in request:
            request["tools"] = [
                t.get("function", t).get("name") for t in self.kwargs["tools"] if isinstance(t, dict)
            ]
        content_key = "messages" if self.operation in _CHATS else "input"
        now = time.monotonic()
        address, port = provider.server() if provider else (None, None)
        return {
            "id": trace.new_span_id("llm"), "kind": "llm", "operation": self.operation,
            "provider": provider.name if provider else None,
            "system": provider.system if provider else None,
            "server_address": address, "server_port": port,
            "model": provider.model_for(self.requested) if provider else self.requested,
            "requested_model": self.requested, "request": trace.bounded(request),
            content_key: trace.bounded(self.kwargs.get(content_key)),
            "start": self.started_wall, "end": time.time(),
            "duration": round(now - self.started, 6), "latency": round(now - self.sent, 6),
            "retries": self.retries, "rate_limit_wait": round(self.rate_wait, 6),
            "failovers": self.failures or None,
        }

    def finish_response(self, provider: Provider | None, response: Any, cached: bool = False) -> None:
        span = self._span(provider)
        usage = getattr(response, "usage", None)
        span.update(status="ok", cached=cached or None, ttft=None, **_usage_fields(usage),
                    response_model=getattr(response, "model", None),
                    response_id=getattr(response, "id", None))
        if self.operation in _CHATS and response.choices:
            choice = response.choices[0]
            span["finish_reason"] = choice.finish_reason
            span["output"] = trace.bounded(_message_text(choice.message))
        elif self.operation in _RESPONSES:
            span["finish_reason"] = response.status
            span["output"] = trace.bounded(_response_text(response))
        if cached:  # nothing was paid: its span carried the first call's cost, which the
            span["cost"] = 0.0  # runs' summaries and OTel exports counted again
        else:
            self._cost(span, provider)
        self._record(span)

    def finish_stream(
        self, provider: Provider, summary: dict[str, Any], error: BaseException | None
    ) -> None:
        span = self._span(provider)
        ttft = summary.get("ttft")
        span.update(
            status="ok" if error is None else "error", stream=True,
            ttft=round(ttft, 6) if ttft is not None else None,
            finish_reason=summary.get("finish_reason"),
            output=trace.bounded(summary.get("output", summary.get("text", ""))),
            response_model=summary.get("model"), response_id=summary.get("id"),
            **_usage_fields(summary.get("usage")),
        )
        if error is not None:
            span["error"] = describe_error(error)
        self._cost(span, provider)
        self._record(span)

    def fail(self, provider: Provider | None, error: BaseException, usage: Any = None) -> None:
        span = self._span(provider)
        span.update(status="error", error=describe_error(error), **_usage_fields(usage))
        self._cost(span, provider)
        self._record(span)

    @staticmethod
    def _record(span: dict[str, Any]) -> None:
        """The call's span to the run's trace (inside a run), then to the ``llm_call`` hooks
        (metrics count every call, inside a run or not)."""
        trace.record_call(span)
        hooks.call(hooks.llm_call, span)

    def _cost(self, span: dict[str, Any], provider: Provider | None) -> None:
        if span.get("prompt_tokens") is not None:
            # the model the provider ran: one a provider maps the request to (llama for
            # gpt-4o) and that has no price costs nothing known, not the requested one's
            span["cost"] = pricing.cost(
                span["prompt_tokens"], span.get("completion_tokens") or 0, span["model"],
                cached_tokens=span.get("cached_prompt_tokens") or 0)


def _usage_fields(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    details = getattr(usage, "prompt_tokens_details", None)
    if prompt is None:  # the Responses API's names
        prompt = getattr(usage, "input_tokens", None)
        completion = getattr(usage, "output_tokens", None)
        details = getattr(usage, "input_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)  # the provider's prompt cache
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion or 0,
        "total_tokens": getattr(usage, "total_tokens", None),
        **({"cached_prompt_tokens": cached} if isinstance(cached, int) and cached > 0 else {}),
    }


def _message_text(message: Any) -> Any:
    if getattr(message, "tool_calls", None):
        return {"tool_calls": [
            {"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls
        ]}
    return message.content


def _response_text(response: Any) -> Any:
    calls = [item for item in response.output or () if item.type == "function_call"]
    if calls:
        return {"tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls]}
    return response.output_text


def _shown_param(value: Any) -> Any:
    """A request parameter as a span records it: a pydantic model class by its name."""
    return value.__name__ if isinstance(value, type) else value


# -- building clients -----------------------------------------------------------------------


def _attempts(max_retries: Any, where: str) -> int:
    """The SDK's ``max_retries`` as attempts per provider."""
    if not (is_whole(max_retries) and max_retries >= 0):
        raise ConfigError(f"{where}(max_retries=...) is a whole number >= 0, not "
                          f"{max_retries!r}.")
    return int(max_retries) + 1


def wrap(client: openai.OpenAI | openai.AsyncOpenAI, **kwargs: Any) -> OpenAI | AsyncOpenAI:
    """A flowkit client over an ``openai.OpenAI`` you already have (its retries turned off);
    over an ``openai.AsyncOpenAI``, a flowkit :class:`AsyncOpenAI` with its key, URL,
    headers and timeout (its HTTP client is not reused: each event loop needs its own)."""
    provider_keys = {"name", "models", "rate_limits"}
    flowkit_client: type[_Client] = OpenAI
    if isinstance(client, openai.AsyncOpenAI):
        flowkit_client = AsyncOpenAI
        client = openai.OpenAI(
            api_key=client.api_key, base_url=client.base_url, organization=client.organization,
            project=client.project, timeout=client.timeout,
            default_headers=getattr(client, "_custom_headers", None),
            default_query=getattr(client, "_custom_query", None),
        )
    provider = Provider.from_client(client, **{k: v for k, v in kwargs.items() if k in provider_keys})
    return flowkit_client(providers=[provider],
                          **{k: v for k, v in kwargs.items() if k not in provider_keys})


FAKE_API_KEY = "fake-key-for-the-local-server"


def client_from_env(*, asynchronous: bool = False, **kwargs: Any) -> Any:
    """OpenAI when ``OPENAI_API_KEY`` is set; else the local fake server, when
    FLOWKIT_LLM_FAKE_URL says where it is (``flowkit dev``, the demo and the pytest plugin
    set it); else a ConfigError. ``asynchronous=True`` makes an :class:`AsyncOpenAI`."""
    make: type[_Client] = AsyncOpenAI if asynchronous else OpenAI
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return make(api_key=key, base_url=os.environ.get("OPENAI_BASE_URL") or None, **kwargs)
    fake_url = get_settings().llm_fake_url
    if not os.environ.get("FLOWKIT_LLM_FAKE_URL") and fake_url == defaults.LLM_FAKE_URL:
        # a worker whose key was not mounted called the fake's default address: its steps
        # failed with a bare "Connection error." (retried as transient), or, a fake
        # running there, "succeeded" with its canned text
        raise ConfigError("flowkit.llm.client_from_env(): OPENAI_API_KEY is not set; set it "
                          "(with OPENAI_BASE_URL for another OpenAI-compatible provider), or "
                          "set FLOWKIT_LLM_FAKE_URL to use a local fake LLM (flowkit dev, the "
                          "demo and flowkit's pytest plugin set it).")
    log.info("flowkit.llm.client_from_env(): OPENAI_API_KEY is not set: the calls go to the "
             "fake LLM at %s (FLOWKIT_LLM_FAKE_URL)", fake_url)
    return make(api_key=FAKE_API_KEY, base_url=fake_url, name="fake", **kwargs)


def default_model() -> str:
    """The model to ask for when a caller names none (FLOWKIT_LLM_MODEL)."""
    return get_settings().llm_model
