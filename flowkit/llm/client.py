"""An OpenAI client with the SDK's surface, made durable: retries, failover, shared budgets, traces.

Adopt it by changing one import (``from flowkit.llm import OpenAI``) or by
wrapping a client you have (``flowkit.llm.wrap(openai.OpenAI(...))``).
``client.chat.completions.create(...)`` (with ``stream=True``, tools and
response formats) and ``client.embeddings.create(...)`` return the SDK's own
objects; every other attribute is the first provider's SDK client.

One logical call: for each provider in order, wait for its shared rate-limit
budget, send the request (the SDK's own retries are off) and retry transient
failures with backoff honouring ``Retry-After``; when a provider stays down or
saturated, move to the next. Inside a run the call is recorded as a trace span,
and streamed tokens reach the run's stream as ``step.output`` chunks.
"""

from __future__ import annotations

import os
import time
from typing import Any

import openai
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from .. import hooks
from ..config import get_settings
from ..context import current
from ..engine import cache, trace
from ..errors import ConfigError, RateLimitWait, describe_error
from ..store import get_store
from . import pricing
from .providers import Provider, RateLimit, host_of
from .ratelimit import RateLimiter
from .retries import RetryPolicy, is_retryable
from .streaming import TracedStream

CHAT = "chat.completions"
EMBEDDINGS = "embeddings"
_RESPONSE_TYPES = {CHAT: ChatCompletion, EMBEDDINGS: CreateEmbeddingResponse}
#: Request parameters kept out of a span's ``request`` (recorded apart, or never: headers).
_CONTENT_PARAMS = ("messages", "input", "extra_headers", "extra_query", "extra_body")


class OpenAI:
    """``openai.OpenAI``'s surface over one or more providers.

    ``OpenAI(api_key=..., base_url=...)`` makes one provider; ``providers=[...]``
    gives a failover list. ``cache_ttl`` stores answers of deterministic calls
    (``temperature=0`` chats, embeddings) in the component cache for that many seconds.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        providers: list[Provider] | None = None,
        rate_limits: dict[str, RateLimit] | None = None,
        retry: RetryPolicy | None = None,
        cache_ttl: float | None = None,
        timeout: float | None = None,
        name: str | None = None,
        **options: Any,
    ) -> None:
        if providers is None:
            url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
            providers = [Provider(
                name or host_of(url), base_url=url, api_key=api_key,
                rate_limits=dict(rate_limits or {}), timeout=timeout, options=options,
            )]
        elif api_key or base_url or rate_limits or options:
            raise ConfigError("Give either providers=[...] or api_key/base_url/rate_limits, not both.")
        if not providers:
            raise ConfigError("OpenAI(providers=[...]) needs at least one provider.")
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ConfigError(f"Provider names must be unique, got {names}.")
        if cache_ttl is not None and cache_ttl <= 0:
            raise ConfigError("cache_ttl must be a positive number of seconds.")
        self.providers = list(providers)
        self.retry = retry or RetryPolicy()
        self.cache_ttl = cache_ttl
        self.limiter = RateLimiter()
        self.chat = _Chat(self)
        self.embeddings = _Embeddings(self)

    def __getattr__(self, name: str) -> Any:
        # models, files, responses, ...: the first provider's own SDK resources
        if name.startswith("_") or name == "providers":
            raise AttributeError(name)
        return getattr(self.providers[0].client, name)

    def __repr__(self) -> str:
        return f"<flowkit.llm.OpenAI providers={[p.name for p in self.providers]}>"

    # -- one logical call ---------------------------------------------------------------

    def _create(self, operation: str, kwargs: dict[str, Any]) -> Any:
        requested = kwargs.get("model")
        if not isinstance(requested, str) or not requested:
            raise TypeError(f"{operation}.create() needs model='...'.")
        call = _Call(operation, requested, kwargs)
        cache_key = self._cache_key(operation, kwargs)
        if cache_key:
            hit = cache.get(get_store(), cache_key)
            if hit is not None:
                response = _RESPONSE_TYPES[operation].model_validate_json(hit)
                call.finish_response(None, response, cached=True)
                return response
        last: BaseException | None = None
        for provider in self.providers:
            try:
                response = self._on_provider(provider, call)
            except (RateLimitWait, openai.APIError) as exc:
                if not isinstance(exc, RateLimitWait) and not is_retryable(exc):
                    call.fail(provider, exc)
                    raise
                call.failures.append({"provider": provider.name, "error": describe_error(exc)})
                last = exc
                continue
            if call.stream:
                return self._traced_stream(provider, call, response)
            call.finish_response(provider, response)
            self._settle(provider, call, response.usage)
            if cache_key:
                cache.put(get_store(), cache_key, response.model_dump_json(), self.cache_ttl)
            return response
        assert last is not None
        call.fail(None, last)
        raise last

    def _on_provider(self, provider: Provider, call: _Call) -> Any:
        model = provider.model_for(call.requested)
        limit = provider.limit_for(model)
        call.estimate = estimate_tokens(call.operation, call.kwargs) if limit and limit.tpm else 0
        send = _method(provider.sdk_client(), call.operation)
        params = {**call.kwargs, "model": model}
        if call.stream and not call.user_wants_usage:
            params["stream_options"] = {**(params.get("stream_options") or {}), "include_usage": True}

        for attempt in self.retry.retrying():
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    call.retries += 1  # tenacity slept before this one
                if limit is not None:
                    call.rate_wait += self.limiter.acquire(
                        provider.name, model, limit, call.estimate, get_settings().llm_rate_max_wait
                    )
                call.sent = time.monotonic()
                return send(**params)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _traced_stream(self, provider: Provider, call: _Call, stream: Any) -> TracedStream:
        def done(summary: dict[str, Any], error: BaseException | None) -> None:
            self._settle(provider, call, summary.get("usage"))
            call.finish_stream(provider, summary, error)

        return TracedStream(stream, current(), call.sent, not call.user_wants_usage, done)

    def _settle(self, provider: Provider, call: _Call, usage: Any) -> None:
        if call.estimate and usage is not None:
            model = provider.model_for(call.requested)
            self.limiter.settle(provider.name, model, call.estimate, int(usage.total_tokens or 0))

    def _cache_key(self, operation: str, kwargs: dict[str, Any]) -> str | None:
        if not self.cache_ttl or kwargs.get("stream"):
            return None
        if operation == CHAT and kwargs.get("temperature") != 0:
            return None  # only a deterministic request has one right answer to store
        return cache.key(f"flowkit.llm.{operation}", "1", kwargs)


class _Chat:
    def __init__(self, client: OpenAI) -> None:
        self.completions = _Completions(client)


class _Completions:
    def __init__(self, client: OpenAI) -> None:
        self._client = client

    def create(self, **kwargs: Any) -> Any:
        """``openai`` ``chat.completions.create``: a ChatCompletion, or a stream of chunks."""
        return self._client._create(CHAT, kwargs)


class _Embeddings:
    def __init__(self, client: OpenAI) -> None:
        self._client = client

    def create(self, **kwargs: Any) -> CreateEmbeddingResponse:
        """``openai`` ``embeddings.create``."""
        return self._client._create(EMBEDDINGS, kwargs)


def _method(client: openai.OpenAI, operation: str) -> Any:
    return client.chat.completions.create if operation == CHAT else client.embeddings.create



def estimate_tokens(operation: str, kwargs: dict[str, Any]) -> int:
    """Tokens a request will use, roughly (4 characters a token), for the rate limiter."""
    content = kwargs.get("messages") if operation == CHAT else kwargs.get("input")
    chars = len(str(content or ""))
    completion = 0
    if operation == CHAT:
        completion = int(
            kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
            or get_settings().llm_completion_estimate
        )
    return chars // 4 + 1 + completion


# -- the trace span of one call ------------------------------------------------------------


class _Call:
    """What one logical call did, recorded as an ``llm`` span when inside a run."""

    def __init__(self, operation: str, requested: str, kwargs: dict[str, Any]) -> None:
        self.operation = operation
        self.requested = requested
        self.kwargs = kwargs
        self.stream = bool(kwargs.get("stream"))
        self.user_wants_usage = bool((kwargs.get("stream_options") or {}).get("include_usage"))
        self.started_wall = time.time()
        self.started = time.monotonic()
        self.sent = self.started
        self.retries = 0
        self.rate_wait = 0.0
        self.estimate = 0
        self.failures: list[dict[str, str]] = []

    def _span(self, provider: Provider | None) -> dict[str, Any]:
        request = {k: v for k, v in self.kwargs.items() if k not in _CONTENT_PARAMS}
        if "tools" in request:
            request["tools"] = [t.get("function", {}).get("name") for t in request["tools"] if isinstance(t, dict)]
        content_key = "messages" if self.operation == CHAT else "input"
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
        if self.operation == CHAT and response.choices:
            choice = response.choices[0]
            span["finish_reason"] = choice.finish_reason
            span["output"] = trace.bounded(_message_text(choice.message))
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
            finish_reason=summary.get("finish_reason"), output=trace.bounded(summary.get("text", "")),
            response_model=summary.get("model"), response_id=summary.get("id"),
            **_usage_fields(summary.get("usage")),
        )
        if error is not None:
            span["error"] = describe_error(error)
        self._cost(span, provider)
        self._record(span)

    def fail(self, provider: Provider | None, error: BaseException) -> None:
        span = self._span(provider)
        span.update(status="error", error=describe_error(error))
        self._record(span)

    @staticmethod
    def _record(span: dict[str, Any]) -> None:
        """The call's span to the run's trace (inside a run), then to the ``llm_call`` hooks
        (metrics count every call, inside a run or not)."""
        trace.record_call(span)
        hooks.call(hooks.llm_call, span)

    def _cost(self, span: dict[str, Any], provider: Provider | None) -> None:
        if span.get("prompt_tokens") is not None:
            span["cost"] = pricing.cost(
                span["prompt_tokens"], span.get("completion_tokens") or 0, span["model"], self.requested
            )


def _usage_fields(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "prompt_tokens": getattr(usage, "prompt_tokens", None),
        "completion_tokens": getattr(usage, "completion_tokens", 0) or 0,
        "total_tokens": getattr(usage, "total_tokens", None),
    }


def _message_text(message: Any) -> Any:
    if getattr(message, "tool_calls", None):
        return {"tool_calls": [
            {"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls
        ]}
    return message.content


# -- building clients -----------------------------------------------------------------------


def wrap(client: openai.OpenAI, **kwargs: Any) -> OpenAI:
    """A flowkit client over an ``openai.OpenAI`` you already have (its retries turned off)."""
    provider_keys = {"name", "models", "rate_limits"}
    provider = Provider.from_client(client, **{k: v for k, v in kwargs.items() if k in provider_keys})
    return OpenAI(providers=[provider], **{k: v for k, v in kwargs.items() if k not in provider_keys})


FAKE_API_KEY = "fake-key-for-the-local-server"


def client_from_env(**kwargs: Any) -> OpenAI:
    """OpenAI when ``OPENAI_API_KEY`` is set; else the local fake server at FLOWKIT_LLM_FAKE_URL."""
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return OpenAI(api_key=key, base_url=os.environ.get("OPENAI_BASE_URL") or None, **kwargs)
    return OpenAI(api_key=FAKE_API_KEY, base_url=get_settings().llm_fake_url, name="fake", **kwargs)


def default_model() -> str:
    """The model to ask for when a caller names none (FLOWKIT_LLM_MODEL)."""
    return get_settings().llm_model
