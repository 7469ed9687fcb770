"""The OpenAI surface people call, on both clients, through the real SDK against the fake
server: ``responses.create`` (plain and streamed), ``responses.parse``,
``chat.completions.parse``, the async client's retries and failover, unwrapped calls
logged; inside runs, on real workers, the streamed deltas reach the run's stream."""

from __future__ import annotations

import asyncio
import logging

import pytest
from openai.types.responses import ParsedResponse, Response
from pydantic import BaseModel

import flowkit
from flowkit.engine import trace
from flowkit.llm import AsyncOpenAI, OpenAI, Provider, RetryPolicy
from tests.llm import workflows as wf

MODEL = "gpt-4o-mini"
QUICK = RetryPolicy(attempts=3, initial=0.01, maximum=0.02)
WAIT = 60


class Answer(BaseModel):
    title: str
    score: int


def call(client, method: str, **kwargs):
    """``client.<method>(**kwargs)``, awaited on a fresh loop for the async client."""
    target = client
    for part in method.split("."):
        target = getattr(target, part)
    if isinstance(client, AsyncOpenAI):
        return asyncio.run(_awaited(target, kwargs))
    result = target(**kwargs)
    return list(result) if kwargs.get("stream") else result


async def _awaited(method, kwargs):
    result = await method(**kwargs)
    if kwargs.get("stream"):
        return [event async for event in result]
    return result


def clients(server) -> list:
    return [
        OpenAI(api_key="sk-k", base_url=server.base_url, retry=QUICK),
        AsyncOpenAI(api_key="sk-k", base_url=server.base_url, retry=QUICK),
    ]


@pytest.fixture(params=["sync", "async"])
def client(request, servers):
    primary, _ = servers
    sync, asynchronous = clients(primary)
    return sync if request.param == "sync" else asynchronous


def test_responses_create_returns_the_sdks_response_with_usage(client, servers):
    reply = call(client, "responses.create", model=MODEL, input="hello there", max_output_tokens=6)
    assert isinstance(reply, Response)
    assert reply.output_text and len(reply.output_text.split()) == 6
    assert reply.usage.output_tokens == 6 and reply.usage.total_tokens > 6
    assert servers[0].stats.requests[-1]["path"] == "/v1/responses"


def test_an_unknown_argument_is_said_as_the_sync_sdk_says_it(servers):
    """A request that does not stream goes through the SDK's async twin: its TypeError
    named AsyncCompletions, a class the caller never used."""
    client = OpenAI(api_key="sk-test-surface", base_url=servers[0].base_url)
    with pytest.raises(TypeError) as refused:
        client.chat.completions.create(model=wf.MODEL, messages=[], no_such_option=1)
    assert str(refused.value).startswith("Completions.create() got an unexpected keyword "
                                         "argument 'no_such_option'"), str(refused.value)


def test_a_streamed_response_yields_the_sdks_events(client):
    events = call(
        client, "responses.create", model=MODEL, input="hello", stream=True, max_output_tokens=5
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == 5


def test_responses_parse_and_chat_parse_fill_pydantic_models(client):
    parsed = call(client, "responses.parse", model=MODEL, input="rate it", text_format=Answer)
    assert isinstance(parsed, ParsedResponse)
    assert isinstance(parsed.output_parsed, Answer)
    chat = call(
        client,
        "chat.completions.parse",
        model=MODEL,
        response_format=Answer,
        messages=[{"role": "user", "content": "rate it"}],
    )
    assert isinstance(chat.choices[0].message.parsed, Answer)


def test_tools_come_back_as_function_calls(client):
    reply = call(
        client,
        "responses.create",
        model=MODEL,
        input="weather in Paris?",
        tools=[
            {
                "type": "function",
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
    )
    [item] = reply.output
    assert item.type == "function_call" and item.name == "get_weather"


def test_the_async_client_retries_then_fails_over(servers):
    primary, backup = servers
    primary.configure(script=(500, "drop", 503))
    aclient = AsyncOpenAI(
        providers=[
            Provider("primary", base_url=primary.base_url, api_key="sk-a"),
            Provider("backup", base_url=backup.base_url, api_key="sk-b"),
        ],
        retry=QUICK,
    )
    seen: list[dict] = []
    flowkit.hooks.llm_call.append(seen.append)
    try:
        reply = call(aclient, "responses.create", model=MODEL, input="hi")
    finally:
        flowkit.hooks.llm_call.remove(seen.append)
    assert reply.output_text
    assert [r["status"] for r in primary.stats.requests] == [500, "drop", 503]
    assert [r["status"] for r in backup.stats.requests] == [200]
    [span] = seen
    assert span["provider"] == "backup" and span["retries"] == 2
    assert span["operation"] == "responses" and span["prompt_tokens"] > 0
    assert [f["provider"] for f in span["failovers"]] == ["primary"]


def test_with_raw_response_is_retried_traced_and_keeps_the_sdks_raw_response(client, servers):
    """``with_raw_response.create`` went straight to the SDK: no retries, failover, rate
    limits or span. Now it is one logical call like ``create``, answered with the SDK's
    raw response (its headers, its ``parse()``)."""
    primary, _ = servers
    primary.configure(script=(500, 503))
    seen: list[dict] = []
    flowkit.hooks.llm_call.append(seen.append)
    try:
        raw = call(client, "responses.with_raw_response.create", model=MODEL, input="hi",
                   max_output_tokens=4)
        chat = call(client, "chat.completions.with_raw_response.create", model=MODEL,
                    messages=[{"role": "user", "content": "hi"}])
        parsed = call(client, "chat.completions.with_raw_response.parse", model=MODEL,
                      response_format=Answer, messages=[{"role": "user", "content": "rate"}])
        vectors = call(client, "embeddings.with_raw_response.create", model="emb", input="x")
    finally:
        flowkit.hooks.llm_call.remove(seen.append)
    assert [r["status"] for r in primary.stats.requests[:3]] == [500, 503, 200]
    assert raw.http_response.status_code == 200 and raw.headers["content-type"]
    reply = raw.parse()
    assert isinstance(reply, Response) and reply.usage.output_tokens == 4
    assert chat.parse().choices[0].message.content
    assert isinstance(parsed.parse().choices[0].message.parsed, Answer)
    assert vectors.parse().data[0].embedding
    assert [span["operation"] for span in seen] == [
        "responses", "chat.completions", "chat.completions.parse", "embeddings"]
    assert seen[0]["retries"] == 2 and seen[0]["completion_tokens"] == 4
    assert seen[0]["response_id"] == reply.id


def test_the_clients_own_with_raw_response_is_the_resources_one(client, servers):
    """``client.with_raw_response.chat.completions.create`` was the SDK's, unwrapped."""
    primary, _ = servers
    primary.configure(script=(500, 503))
    seen: list[dict] = []
    flowkit.hooks.llm_call.append(seen.append)
    try:
        chat = call(client, "with_raw_response.chat.completions.create", model=MODEL,
                    messages=[{"role": "user", "content": "hi"}])
        raw = call(client, "with_raw_response.responses.create", model=MODEL, input="hi",
                   max_output_tokens=4)
        vectors = call(client, "with_raw_response.embeddings.create", model="emb", input="x")
    finally:
        flowkit.hooks.llm_call.remove(seen.append)
    assert [r["status"] for r in primary.stats.requests[:3]] == [500, 503, 200]
    assert chat.headers["content-type"] and chat.parse().choices[0].message.content
    assert raw.parse().usage.output_tokens == 4 and vectors.parse().data[0].embedding
    assert [span["operation"] for span in seen] == ["chat.completions", "responses",
                                                    "embeddings"]
    assert seen[0]["retries"] == 2


def test_an_unwrapped_call_is_noted_at_debug_level(servers, caplog):
    sync, _ = clients(servers[0])
    with caplog.at_level(logging.DEBUG, logger="flowkit.llm.client"):
        assert sync.models.list().data
        sync.responses.retrieve  # noqa: B018 - the attribute access is what logs
    notes = [r.getMessage() for r in caplog.records if "unwrapped" in r.getMessage()]
    assert any("client.models" in n for n in notes)
    assert any("client.responses.retrieve" in n for n in notes)


# -- inside runs ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("workflow", ["surfaced", "async_surfaced"])
def test_inside_a_run_the_response_deltas_reach_the_runs_stream(llm, workflow):
    run = getattr(wf, workflow).start({"prompt": "tell me about durable agents", "max_tokens": 12})
    out = run.result(WAIT)
    assert out["parsed"] == out["chat_parsed"] == {"title": "draft", "score": 1}
    assert out["parsed_type"] == "Verdict"
    assert out["event_types"][0] == "response.completed"
    chunks = [e.data["chunk"] for e in run.events() if e.type == "step.output"]
    assert len(chunks) > 1 and "".join(chunks) == out["text"]
    spans = [s for s in trace.read(run.id) if s["kind"] == "llm"]
    assert [s["operation"] for s in spans] == [
        "responses",
        "responses.parse",
        "chat.completions.parse",
    ]
    assert spans[0]["stream"] and spans[0]["completion_tokens"] == 12
    assert spans[0]["output"] == out["text"]
    assert spans[1]["request"]["text_format"] == "Verdict"
    completed = next(e for e in run.events() if e.type == "step.completed")
    assert completed.data["tokens"]["completion"] == 12 + 2 * spans[1]["completion_tokens"]


@pytest.mark.integration
def test_an_async_step_fails_over_when_the_primary_is_down(llm):
    primary, backup = llm
    primary.set_down()
    run = wf.async_surfaced.start({"prompt": "hi", "max_tokens": 4, "client": "failover"})
    assert run.result(WAIT)["parsed"] == {"title": "draft", "score": 1}
    spans = [s for s in trace.read(run.id) if s["kind"] == "llm"]
    assert {s["provider"] for s in spans} == {"backup"}
    assert all(s["failovers"] for s in spans)
    assert len([r for r in backup.stats.requests if r["status"] == 200]) == 3


def test_a_deterministic_response_is_answered_from_the_cache(servers, store):
    primary, _ = servers
    sync = OpenAI(api_key="sk-k", base_url=primary.base_url, cache_ttl=60)
    asynchronous = AsyncOpenAI(api_key="sk-k", base_url=primary.base_url, cache_ttl=60)
    first = call(sync, "responses.create", model=MODEL, input="cache me", temperature=0)
    again = call(asynchronous, "responses.create", model=MODEL, input="cache me", temperature=0)
    assert isinstance(again, Response) and again.output_text == first.output_text
    assert again.usage.output_tokens == first.usage.output_tokens
    assert len(primary.stats.requests) == 1


def test_parse_is_never_answered_from_the_cache(servers, store):
    # as README's Caching says (it said every temperature=0 call was cached): a parsed
    # answer's type is the caller's pydantic model, which the cache does not keep
    primary, _ = servers
    client = OpenAI(api_key="sk-k", base_url=primary.base_url, cache_ttl=60)
    for _ in range(2):
        call(client, "chat.completions.parse", model=MODEL, temperature=0,
             messages=[{"role": "user", "content": "parse me"}], response_format=Answer)
        call(client, "responses.parse", model=MODEL, input="parse me", temperature=0,
             text_format=Answer)
    assert len(primary.stats.requests) == 4


def test_the_fake_llm_server_starts_from_the_shell_without_a_warning():
    """``python -m flowkit.testing.fake_openai`` (the README's) printed runpy's RuntimeWarning
    first: the package imported the module before running it as __main__."""
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-m", "flowkit.testing.fake_openai", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()  # its banner, or the warning before it
    finally:
        server.terminate()
        server.wait(10)
    assert first.startswith("fake LLM server listening on http://127.0.0.1:"), first
