"""The LLM client outside a run, against the fake server over real HTTP, through the real SDK."""

from __future__ import annotations

import asyncio
import json
import time

import openai
import pytest

import flowkit
import flowkit.llm
import flowkit.llm.pricing
from flowkit.errors import ConfigError
from flowkit.llm import OpenAI, Provider, RateLimit, RateLimiter, RetryPolicy

MESSAGES = [{"role": "user", "content": "hello"}]
QUICK = RetryPolicy(attempts=4, initial=0.01, maximum=0.02)


def statuses(server) -> list:
    return [r["status"] for r in server.stats.requests]


def test_transient_failures_are_retried_and_retry_after_is_honoured(servers):
    primary, _ = servers
    primary.configure(script=(429, 500, "drop"), retry_after=0.6)
    client = OpenAI(api_key="sk-test-retries", base_url=primary.base_url, retry=QUICK)

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert reply.choices[0].message.content
    assert statuses(primary) == [429, 500, "drop", 200]
    times = [r["t"] for r in primary.stats.requests]
    assert times[1] - times[0] >= 0.55, "the 429's Retry-After (0.6 s) was not waited out"
    assert times[2] - times[1] < 0.5, "a 500 without Retry-After should use the short backoff"


def test_one_logical_call_is_one_request_when_retries_are_exhausted(servers):
    primary, _ = servers
    primary.configure(script=(503,))
    # the wrapped SDK client would retry twice on its own; flowkit turns that off
    client = flowkit.llm.wrap(openai.OpenAI(api_key="sk-wrapped-key", base_url=primary.base_url,
                                            max_retries=5), retry=RetryPolicy(attempts=1))

    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert statuses(primary) == [503]


def test_a_bad_request_fails_at_once_with_the_providers_message(servers):
    """A 400 is the request's own fault: every provider would refuse it (and bill nothing)."""
    primary, backup = servers
    primary.configure(script=(400,))
    client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="sk-a-key"),
                               Provider("backup", base_url=backup.base_url, api_key="sk-b-key")],
                    retry=QUICK)

    with pytest.raises(openai.BadRequestError, match="Invalid request") as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(primary.stats.requests) == 1
    assert backup.stats.requests == [], "a bad request must not fail over"
    assert raised.value.flowkit_final


@pytest.mark.parametrize(
    ("configure", "model"),
    [
        ({"api_key": "sk-the-right-key"}, "gpt-4o-mini"),   # a revoked key: 401
        ({"models": ("gpt-4o-mini",)}, "no-such-model"),    # a model it does not serve: 404
    ],
)
def test_a_provider_refusing_its_key_or_the_model_fails_over_at_once(servers, configure, model):
    """A 401 or 404 failed the call while a backup with its own key and models stood by:
    it is that provider's answer, not the request's. It is not retried there."""
    primary, backup = servers
    primary.configure(**configure)
    client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="sk-wrong-key"),
                               Provider("backup", base_url=backup.base_url, api_key="sk-other-key")],
                    retry=QUICK)

    assert client.chat.completions.create(model=model, messages=MESSAGES).choices
    assert len(primary.stats.requests) == 1, "not retried on the provider that refused"
    assert statuses(backup) == [200]


@pytest.mark.parametrize(
    ("configure", "model", "error", "message"),
    [
        ({"api_key": "sk-the-right-key"}, "gpt-4o-mini", openai.AuthenticationError, "Incorrect API key"),
        ({"models": ("gpt-4o-mini",)}, "no-such-model", openai.NotFoundError, "does not exist"),
    ],
)
def test_refused_by_every_provider_fails_with_the_last_one_s_message_as_final(
    servers, configure, model, error, message
):
    primary, backup = servers
    primary.configure(**configure)
    backup.configure(**configure)
    client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="sk-wrong-key"),
                               Provider("backup", base_url=backup.base_url, api_key="sk-other-key")],
                    retry=QUICK)

    with pytest.raises(error, match=message) as raised:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert len(primary.stats.requests) == 1 and len(backup.stats.requests) == 1
    assert raised.value.flowkit_final, "a step's default retry must not send it again"


def test_failover_moves_to_the_next_provider_with_its_model_name(servers):
    primary, backup = servers
    primary.set_down(True)
    client = OpenAI(providers=[
        Provider("primary", base_url=primary.base_url, api_key="sk-primary-key"),
        Provider("backup", base_url=backup.base_url, api_key="sk-backup-key",
                 models={"gpt-4o-mini": "backup-model"}),
    ], retry=QUICK)

    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert reply.model == "backup-model"
    assert [r["model"] for r in backup.stats.requests] == ["backup-model"]


def test_retries_before_a_failover_are_the_failed_provider_s(servers):
    """flowkit_llm_retries_total (and the trace) charged them to the provider that answered
    at once: an alert on the flaky provider's retries blamed the healthy backup."""
    from flowkit.metrics import families, listeners

    primary, backup = servers
    primary.configure(rate_500=1.0)  # it answers, with an error each time
    spans: list[dict] = []
    flowkit.hooks.llm_call.append(spans.append)
    try:
        client = OpenAI(providers=[
            Provider("primary", base_url=primary.base_url, api_key="sk-primary-key"),
            Provider("backup", base_url=backup.base_url, api_key="sk-backup-key")], retry=QUICK)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        flowkit.hooks.llm_call.remove(spans.append)
    [span] = spans
    sent = len(primary.stats.requests)
    assert sent > 1 and span["provider"] == "backup" and span["retries"] == sent - 1
    [failed] = span["failovers"]
    assert (failed["provider"], failed["retries"]) == ("primary", sent - 1)
    families.reset()
    listeners.llm_call(span)
    counted = {s.labels["provider"]: s.value for m in families.families().llm_retries.collect()
               for s in m.samples if s.name == "flowkit_llm_retries_total"}
    assert counted == {"primary": sent - 1}
    families.reset()


def test_a_model_a_provider_maps_the_call_to_is_priced_as_itself(servers):
    """A provider running another model for the one asked (llama for gpt-4o) charged the
    asked one's price when its own had none."""
    primary, _ = servers
    spans: list[dict] = []
    flowkit.hooks.llm_call.append(spans.append)
    try:
        client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="k",
                                            models={"gpt-4o-mini": "unpriced-model"})], retry=QUICK)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        flowkit.hooks.llm_call.remove(spans.append)
    [span] = spans
    assert (span["model"], span["requested_model"]) == ("unpriced-model", "gpt-4o-mini")
    assert span["prompt_tokens"] > 0 and span["cost"] is None


@pytest.mark.parametrize(("model", "price"), [
    ("gpt-4o-mini", (0.15, 0.6)),
    ("gpt-4o-mini-2024-07-18", (0.15, 0.6)),  # a dated snapshot: its model's price
    ("gpt-4o-2024-08-06", (2.5, 10.0)),
    ("gpt-4.1-nano", (0.1, 0.4)),  # it cost gpt-4.1's price, 20 times its own
    ("gpt-4o-audio-preview", None),  # another model, not a snapshot: no price known
])
def test_a_model_s_price_is_its_own_or_its_dated_snapshot_s(model, price):
    found = flowkit.llm.pricing.price_of(model)
    assert (found[:2] if found else found) == price


def test_cached_prompt_tokens_cost_the_cached_input_price():
    """A provider's prompt cache bills cached input tokens at a discount: they were charged
    at the full input price (a tool loop re-sending its history, twice its cost)."""
    from openai.types.completion_usage import CompletionUsage, PromptTokensDetails

    from flowkit.llm.client import _usage_fields

    usage = CompletionUsage(prompt_tokens=1_000_000, completion_tokens=0,
                            total_tokens=1_000_000,
                            prompt_tokens_details=PromptTokensDetails(cached_tokens=900_000))
    fields = _usage_fields(usage)
    assert fields["cached_prompt_tokens"] == 900_000
    cost = flowkit.llm.pricing.cost(fields["prompt_tokens"], 0, "gpt-4o-mini",
                                    cached_tokens=fields["cached_prompt_tokens"])
    assert cost == 0.0825  # 100k at 0.15 per million, 900k at 0.075
    flowkit.llm.set_prices({"no-discount": [1.0, 2.0]})  # no third price: the input's
    assert flowkit.llm.pricing.cost(1_000_000, 0, "no-discount", cached_tokens=900_000) == 1.0


def test_a_retry_after_beyond_patience_fails_over_at_once(servers):
    primary, backup = servers
    primary.configure(rate_429=1.0, retry_after=120)
    client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="sk-primary-key"),
                               Provider("backup", base_url=backup.base_url, api_key="sk-backup-key")],
                    retry=RetryPolicy(attempts=5, max_retry_after=30))
    started = time.monotonic()

    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert time.monotonic() - started < 5
    assert statuses(primary) == [429]
    assert statuses(backup) == [200]


def test_a_retry_after_beyond_patience_on_the_only_provider_says_why_it_was_not_retried(servers):
    """It failed at once with the provider's bare message, and its span read a failover
    to nowhere under ``provider: None``."""
    primary, _ = servers
    primary.configure(rate_429=1.0, retry_after=120)
    client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="sk-primary-key")],
                    retry=RetryPolicy(attempts=5, max_retry_after=30))
    seen: list[dict] = []
    flowkit.hooks.llm_call.append(seen.append)
    try:
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        flowkit.hooks.llm_call.remove(seen.append)
    assert statuses(primary) == [429]
    assert str(refused.value).endswith(
        " (flowkit: not retried, as its Retry-After, 120s, is over the longest waited out, 30s: "
        "RetryPolicy(max_retry_after=...) or FLOWKIT_LLM_MAX_RETRY_AFTER; or give the client "
        "another provider to fail over to)")
    [span] = seen
    assert (span["provider"], span["status"], span["failovers"]) == ("primary", "error", None)
    assert span["error"] == f"RateLimitError: {refused.value}"


def test_every_provider_failing_raises_the_last_error(servers):
    primary, backup = servers
    primary.set_down(True)
    backup.configure(rate_500=1.0)
    client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="sk-a-test-key"),
                               Provider("backup", base_url=backup.base_url, api_key="sk-b-test-key")],
                    retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.01))

    seen: list[dict] = []
    flowkit.hooks.llm_call.append(seen.append)
    try:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    finally:
        flowkit.hooks.llm_call.remove(seen.append)
    assert statuses(backup) == [500, 500]
    # the span is the last provider's failure; the first one's is the one failover
    [span] = seen
    assert span["provider"] == "backup" and span["error"].startswith("InternalServerError")
    assert [f["provider"] for f in span["failovers"]] == ["primary"]


def test_streaming_tools_response_format_and_embeddings_keep_the_sdk_types(servers):
    primary, _ = servers
    client = OpenAI(api_key="sk-test-surface", base_url=primary.base_url)

    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=5, stream=True))
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert all(c.choices for c in chunks), "the usage chunk flowkit asked for must stay hidden"
    assert len("".join(c.choices[0].delta.content or "" for c in chunks).split()) == 5

    tools = [{"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}}}}]
    called = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=tools)
    assert called.choices[0].finish_reason == "tool_calls"
    assert called.choices[0].message.tool_calls[0].function.name == "search"

    schema = {"type": "object", "properties": {"title": {"type": "string"}}}
    structured = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    assert "title" in json.loads(structured.choices[0].message.content)

    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert isinstance(vectors, openai.types.CreateEmbeddingResponse)
    assert len(vectors.data) == 2 and vectors.usage.prompt_tokens == 2


def test_deterministic_calls_are_served_from_the_cache(store, servers):
    primary, _ = servers
    client = OpenAI(api_key="sk-test-cache", base_url=primary.base_url, cache_ttl=60)
    ask = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0}

    first = client.chat.completions.create(**ask)
    second = client.chat.completions.create(**ask)
    client.chat.completions.create(**{**ask, "temperature": 0.7})
    client.chat.completions.create(**{**ask, "temperature": 0.7})

    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.id == first.id
    assert len(primary.stats.requests) == 3, "only the temperature=0 repeat is cached"


def test_the_cache_keeps_each_providers_answers_apart(store, servers):
    # the request alone was the key: another server, account or model mapping was answered
    # with the first client's stored reply, and its server never saw the request
    primary, backup = servers
    ask = {"model": "gpt-4o-mini", "messages": MESSAGES, "temperature": 0}
    OpenAI(api_key="sk-a", base_url=primary.base_url, cache_ttl=60).chat.completions.create(**ask)
    OpenAI(api_key="sk-b", base_url=backup.base_url, cache_ttl=60).chat.completions.create(**ask)
    assert len(backup.stats.requests) == 1, "another server is asked its own answer"

    def mapped(model: str, **options) -> OpenAI:
        return OpenAI(providers=[Provider("p", base_url=primary.base_url, api_key="sk-a",
                                          models={"gpt-4o-mini": model}, options=options)],
                      cache_ttl=60)

    first = mapped("small").chat.completions.create(**ask)
    assert mapped("large").chat.completions.create(**ask).model == "large" != first.model
    mapped("small", organization="org-2").chat.completions.create(**ask)
    mapped("small", project="proj-2").chat.completions.create(**ask)
    assert [r["model"] for r in primary.stats.requests] == ["gpt-4o-mini", "small", "large",
                                                            "small", "small"]
    # one account's clients share: another key of it, or another client object, is answered
    again = OpenAI(providers=[Provider("p", base_url=primary.base_url, api_key="sk-rotated",
                                       models={"gpt-4o-mini": "small"})], cache_ttl=60)
    assert again.chat.completions.create(**ask).id == first.id
    assert len(primary.stats.requests) == 5


def test_rate_limiter_hands_out_a_burst_then_asks_to_wait(store):
    limiter = RateLimiter()
    limit = RateLimit(rpm=60, burst=2, tpm=6000)

    assert limiter.try_acquire("p", "m", limit, tokens=10) == 0
    assert limiter.try_acquire("p", "m", limit, tokens=10) == 0
    wait = limiter.try_acquire("p", "m", limit, tokens=10)
    assert 0.5 < wait <= 1.0, "one request a second: the third waits about a second"
    # a request bigger than the token bucket still goes once the bucket is full
    big = RateLimit(tpm=600)
    assert limiter.try_acquire("p", "big", big, tokens=5000) == 0
    assert limiter.try_acquire("p", "big", big, tokens=1) > 1, "it left the bucket in debt"


#: a 1000-token bucket refilled at a token a second: a test's own refill is a few tokens
SLOW_BUDGET = RateLimit(tpm=60, burst=1000)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("fault", [(500, 500), (500, 500, 500), "down"],
                         ids=["two-500s-then-200", "three-500s", "refused"])
def test_a_failed_attempt_gives_its_token_estimate_back(store, servers, asynchronous, fault):
    """Each attempt took its estimate (about 310 tokens here) from the shared budget, and
    only the answer was settled: the failed attempts' were never given back, and the next
    call, on any worker, waited for tokens no one spent (a call that failed outright
    left its whole cost taken)."""
    primary, _ = servers
    if fault == "down":
        primary.set_down(True)
    else:
        primary.configure(script=fault)
    make = flowkit.llm.AsyncOpenAI if asynchronous else OpenAI
    client = make(api_key="sk-test-budget", base_url=primary.base_url, name="primary",
                  rate_limits={"gpt-4o-mini": SLOW_BUDGET},
                  retry=RetryPolicy(attempts=3, initial=0, maximum=0))
    ask = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 300}

    used = 0
    try:
        call = client.chat.completions.create(**ask)
        used = (asyncio.run(call) if asynchronous else call).usage.total_tokens
    except (openai.InternalServerError, openai.APIConnectionError):
        assert fault != (500, 500), "the third attempt is answered"

    assert (used > 0) == (fault == (500, 500))
    assert len(primary.stats.requests) == (0 if fault == "down" else 3)
    # the budget is short of what the answer used, not of the failed attempts' estimates
    assert client.limiter.try_acquire("primary", "gpt-4o-mini", SLOW_BUDGET,
                                      tokens=1000 - used - 10) == 0


def test_bad_configuration_is_refused_clearly():
    with pytest.raises(ConfigError, match="rpm"):
        RateLimit()
    with pytest.raises(ConfigError, match="not both"):
        OpenAI(api_key="x", providers=[Provider("a", api_key="sk-x")])
    with pytest.raises(ConfigError, match="unique"):
        OpenAI(providers=[Provider("a", api_key="sk-x"), Provider("a", api_key="sk-y")])


@pytest.mark.parametrize("make, says", [
    (lambda: OpenAI(api_key="k", base_url="http://x", rate_limits={"*": 5}),
     "rate_limits= maps a model (or '*') to a flowkit.llm.RateLimit"),
    (lambda: OpenAI(api_key="k", base_url="http://x", retry=3),
     "OpenAI(retry=...) takes a flowkit.llm.RetryPolicy(...)"),
    (lambda: OpenAI(providers=["a"]), "OpenAI(providers=...) takes a list of flowkit.llm.Provider"),
    (lambda: OpenAI(providers=Provider("a", api_key="sk-x")),
     "OpenAI(providers=...) takes a list of flowkit.llm.Provider"),
    (lambda: OpenAI(api_key="k", base_url="http://x", cache_ttl=float("inf")),
     "OpenAI(cache_ttl=...) is a number of seconds > 0, not inf."),
    (lambda: OpenAI(api_key="k", base_url="http://x", timeout=-1),
     "OpenAI(timeout=...) is a number of seconds > 0, not -1 (or an openai.Timeout(...))."),
    (lambda: Provider("a", api_key="sk-x", rate_limits={"*": {"rpm": 5}}), "rate_limits= maps"),
    (lambda: Provider("a", api_key="sk-x", models={"gpt": 4}), "Provider(models=...) maps"),
    (lambda: RateLimit(rpm=float("nan")), "RateLimit(rpm=...) is a finite number > 0, not nan."),
    (lambda: RateLimit(tpm="5"), "RateLimit(tpm=...) is a finite number > 0, not '5'."),
    (lambda: RetryPolicy(attempts=2.5), "RetryPolicy(attempts=...) is a whole number >= 1"),
    (lambda: RetryPolicy(initial=-1), "RetryPolicy(initial=...) is a number of seconds >= 0"),
])
def test_each_argument_of_the_client_is_checked_where_it_is_written(make, says):
    """A dict for a RateLimit, 3 for a RetryPolicy or one Provider for a list was taken, and
    failed at the first call (AttributeError, TypeError), or never (a NaN rate)."""
    with pytest.raises(ConfigError) as refused:
        make()
    assert says in str(refused.value)


def test_the_sdks_own_timeout_object_is_taken_as_it_is():
    apart = openai.Timeout(30, connect=2)  # the SDK's way to give connect and read apart
    client = OpenAI(api_key="k", base_url="http://x", timeout=apart)
    provider = Provider("a", api_key="sk-x", timeout=apart)
    assert client.providers[0].client.timeout is apart and provider.client.timeout is apart


def test_with_options_keeps_failover_retries_and_applies_the_option(servers):
    """with_options(timeout=...) returned the bare SDK client, its retries off: no
    failover, no retry, no span; max_retries= was ignored."""
    primary, backup = servers
    primary.set_down(True)
    client = OpenAI(providers=[
        Provider("primary", base_url=primary.base_url, api_key="sk-primary-key"),
        Provider("backup", base_url=backup.base_url, api_key="sk-backup-key"),
    ], retry=QUICK)
    for derived in (client.with_options(timeout=5, default_headers={"X-Team": "a"}),
                    client.copy(timeout=5)):
        assert isinstance(derived, OpenAI) and derived.retry == QUICK
        assert [p.client.timeout for p in derived.providers] == [5, 5]
        reply = derived.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert reply.choices[0].message.content  # failed over to the backup
    assert client.providers[0].client.timeout != 5, "the original client is left as it was"
    assert client.with_options(max_retries=5).retry.attempts == 6


def test_the_sdk_s_max_retries_sets_flowkit_s_attempts():
    """OpenAI(max_retries=5) raised the SDK's 'multiple values for keyword argument'."""
    assert OpenAI(api_key="sk-k", base_url="http://127.0.0.1:9/v1", max_retries=5).retry \
        == RetryPolicy(attempts=6)
    with pytest.raises(ConfigError, match=r"max_retries=...\) and retry=RetryPolicy"):
        OpenAI(api_key="sk-k", max_retries=1, retry=QUICK)
    with pytest.raises(ConfigError, match=r"max_retries=...\) is a whole number >= 0"):
        flowkit.llm.AsyncOpenAI(api_key="sk-k", max_retries=-1)


def test_an_async_client_s_attributes_read_outside_async_code():
    """They needed a running event loop: AsyncOpenAI().with_options(timeout=30) at a
    module's top failed with 'no running event loop'."""
    client = flowkit.llm.AsyncOpenAI(api_key="sk-outside", base_url="http://127.0.0.1:9/v1")
    assert client.api_key == "sk-outside"
    assert client.with_options(timeout=30).providers[0].client.timeout == 30
    assert client.models is not None


def test_client_from_env_without_a_key_or_a_fake_llm_named_says_what_to_set(monkeypatch):
    """It called the fake's default address: a worker whose key was not mounted failed each
    step with a bare "Connection error.", retried as transient."""
    from flowkit import config, defaults

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("FLOWKIT_LLM_FAKE_URL", raising=False)
    monkeypatch.setattr(config, "_settings", config.get_settings().replace(
        llm_fake_url=defaults.LLM_FAKE_URL))
    for asynchronous in (False, True):
        with pytest.raises(ConfigError, match=r"^flowkit.llm.client_from_env\(\): OPENAI_API_KEY "
                           r"is not set; set it .* or set FLOWKIT_LLM_FAKE_URL to use a local"):
            flowkit.llm.client_from_env(asynchronous=asynchronous)
    monkeypatch.setenv("FLOWKIT_LLM_FAKE_URL", defaults.LLM_FAKE_URL)  # named: the fake
    assert str(flowkit.llm.client_from_env().base_url).startswith(defaults.LLM_FAKE_URL)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    assert flowkit.llm.client_from_env().api_key == "sk-from-the-environment"
