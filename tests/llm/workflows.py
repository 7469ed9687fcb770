"""Components and workflows of the LLM tests; they call the fake servers the tests start.

Every workflow runs on its own queue (``llm-tests``), served only by the LLM
test workers, so the session's main worker (which does not import this module)
never receives these steps, nor their fan-out and finish tasks.
"""

from __future__ import annotations

import asyncio
import json
import os
from functools import cache

import openai
from agents import Agent, function_tool
from marshmallow import fields
from pydantic import BaseModel

import flowkit
import flowkit.llm
from flowkit import component
from flowkit.llm import AsyncOpenAI, OpenAI, Provider, RateLimit, RetryPolicy
from flowkit.llm.agents_sdk import run_agent, run_agent_streamed
from flowkit.store import get_store

QUEUE = "llm-tests"
MODEL = "gpt-4o-mini"
#: The key the "secured" provider requires; it must never show up in a trace or event.
PROVIDER_KEY = "sk-test-provider-key-do-not-leak-0042"
#: The rate budget the two workers share in test_rate_limit_across_workers.
LIMIT = RateLimit(rpm=600, burst=2)

FAST_RETRY = RetryPolicy(attempts=3, initial=0.02, maximum=0.05)


@cache
def client(profile: str) -> OpenAI:
    primary, backup = os.environ["TEST_LLM_PRIMARY"], os.environ["TEST_LLM_BACKUP"]
    if profile == "plain":
        return OpenAI(api_key="sk-plain-test-key", base_url=primary, name="primary", retry=FAST_RETRY)
    if profile == "secured":
        return OpenAI(api_key=PROVIDER_KEY, base_url=primary, name="primary", retry=FAST_RETRY)
    if profile == "failover":
        return OpenAI(providers=[
            Provider("primary", base_url=primary, api_key="sk-primary-test-key"),
            Provider("backup", base_url=backup, api_key="sk-backup-test-key",
                     models={MODEL: "backup-model"}),
        ], retry=FAST_RETRY)
    if profile == "cached":
        return OpenAI(api_key="sk-cached-test-key", base_url=primary, name="primary", cache_ttl=60,
                      retry=FAST_RETRY)
    if profile == "limited":
        return OpenAI(api_key="sk-limited-test-key", base_url=primary, name="limited",
                      rate_limits={MODEL: LIMIT}, retry=FAST_RETRY)
    raise ValueError(f"unknown client profile {profile!r}")


def _ask(profile: str, prompt: str, **kwargs) -> object:
    return client(profile).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], **kwargs
    )


@component(name="llmtest.ask")
def ask(data: dict) -> dict:
    reply = _ask(data.get("client", "plain"), data["prompt"], max_tokens=data.get("max_tokens", 8))
    return {"text": reply.choices[0].message.content, "model": reply.model}


@component(name="llmtest.stream")
def stream(data: dict) -> dict:
    chunks = _ask("plain", data["prompt"], max_tokens=data["max_tokens"], stream=True)
    kinds = set()
    parts = []
    for chunk in chunks:
        kinds.add(type(chunk).__name__)
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return {"text": "".join(parts), "chunk_types": sorted(kinds)}


@component(name="llmtest.twice")
def twice(data: dict) -> dict:
    """The same deterministic call twice: the second is answered from the cache."""
    replies = [_ask("cached", data["prompt"], max_tokens=5, temperature=0) for _ in range(2)]
    return {"texts": [r.choices[0].message.content for r in replies]}


@component(name="llmtest.both")
def both(data: dict) -> dict:
    """One plain and one streamed call, and an embedding: three spans in the trace."""
    first = _ask("plain", data["prompt"], max_tokens=5)
    parts = [
        c.choices[0].delta.content or ""
        for c in _ask("plain", data["prompt"], max_tokens=12, stream=True)
        if c.choices
    ]
    vectors = client("plain").embeddings.create(model="text-embedding-3-small", input=[data["prompt"]])
    return {"first": first.choices[0].message.content, "second": "".join(parts),
            "dims": len(vectors.data[0].embedding)}


@component(name="llmtest.secretive")
def secretive(data: dict) -> dict:
    """Uses a secret input field in its prompt, through a provider with a secret key."""
    reply = _ask("secured", f"Write to customer {data['customer_token']} about {data['topic']}",
                 max_tokens=6, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    return {"summary": text}


@component(name="llmtest.ask_then_wait")
def ask_then_wait(data: dict) -> dict:
    """One call, then a wait at the test's gate: the step is still running when the test looks."""
    reply = _ask("plain", data["prompt"], max_tokens=4)
    ctx = flowkit.context()
    redis = get_store().redis
    redis.rpush(f"waiting:{ctx.run_id}:ask_then_wait", ctx.attempt)
    if redis.blpop(f"gate:{ctx.run_id}:ask_then_wait", timeout=30) is None:
        raise TimeoutError("gate ask_then_wait never opened")
    return {"text": reply.choices[0].message.content}


@component(name="llmtest.questions")
def questions(data: dict) -> list:
    return [f"question {i}" for i in range(data["n"])]


@component(name="llmtest.answer")
def answer(prompt: str) -> str:
    return _ask("plain", prompt, max_tokens=3).choices[0].message.content


prompt_schema = {"prompt": fields.String(required=True), "client": fields.String(load_default="plain"),
                 "max_tokens": fields.Integer(load_default=8)}

@component(name="llmtest.stream_break")
def stream_break(data: dict) -> dict:
    """Stops reading its stream at the first words, without closing it (a loop left with
    break, as for a stop word)."""
    for chunk in _ask("plain", data["prompt"], max_tokens=data["max_tokens"], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            return {"first": chunk.choices[0].delta.content}
    return {"first": None}


@component(name="llmtest.stream_then_fail")
def stream_then_fail(data: dict) -> dict:
    """Fails on its stream's first words, the stream neither read to its end nor closed."""
    for chunk in _ask("plain", data["prompt"], max_tokens=data["max_tokens"], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            raise ValueError(f"no use for {chunk.choices[0].delta.content!r}")
    return {}


asking = flowkit.Workflow("llmtest_ask", [ask], input_schema=prompt_schema, queue=QUEUE)
stream_failed = flowkit.Workflow("llmtest_stream_then_fail", [stream_then_fail.retry(attempts=1)],
                                 input_schema=prompt_schema, queue=QUEUE)
stream_broken = flowkit.Workflow("llmtest_stream_break", [stream_break],
                                 input_schema=prompt_schema, queue=QUEUE)
streaming = flowkit.Workflow("llmtest_stream", [stream], input_schema=prompt_schema, queue=QUEUE)
traced = flowkit.Workflow("llmtest_both", [both], input_schema=prompt_schema, queue=QUEUE)
asked_twice = flowkit.Workflow("llmtest_twice", [twice], input_schema=prompt_schema, queue=QUEUE)
waiting = flowkit.Workflow("llmtest_wait", [ask_then_wait], input_schema=prompt_schema, queue=QUEUE)
secret = flowkit.Workflow(
    "llmtest_secret", [secretive.secret("customer_token")],
    input_schema={"customer_token": fields.String(required=True), "topic": fields.String(required=True)},
    queue=QUEUE,
)

#: Served only by the gevent worker of tests/llm/test_gevent.py.
GEVENT_QUEUE = "llm-gevent"
fanned_on_gevent = flowkit.Workflow(
    "llmtest_gevent_fan_out", [questions, flowkit.fan_out(answer, batch=10)],
    input_schema={"n": fields.Integer(required=True)}, queue=GEVENT_QUEUE,
)


@component(name="llmtest.answer_or_fail")
def answer_or_fail(prompt: str) -> str:
    """Item 3 asks for a model the server does not serve: a 404, which fails at once."""
    model = "no-such-model" if prompt == "question 3" else MODEL
    reply = client("plain").chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=3)
    return reply.choices[0].message.content


failing_on_gevent = flowkit.Workflow(
    "llmtest_gevent_fan_out_fails", [questions, flowkit.fan_out(answer_or_fail, batch=5)],
    input_schema={"n": fields.Integer(required=True)}, queue=GEVENT_QUEUE,
)


# -- the Responses API, structured outputs and the async client ------------------------------


class Verdict(BaseModel):
    """A structured output: the fake server fills the schema's fields."""

    title: str
    score: int


@cache
def async_client(profile: str) -> AsyncOpenAI:
    primary, backup = os.environ["TEST_LLM_PRIMARY"], os.environ["TEST_LLM_BACKUP"]
    if profile == "failover":
        return AsyncOpenAI(providers=[
            Provider("primary", base_url=primary, api_key="sk-primary-test-key"),
            Provider("backup", base_url=backup, api_key="sk-backup-test-key",
                     models={MODEL: "backup-model"}),
        ], retry=FAST_RETRY)
    return AsyncOpenAI(api_key="sk-plain-test-key", base_url=primary, name="primary",
                       retry=FAST_RETRY)


def _surface_result(text: str, parsed: BaseModel, chat_parsed: BaseModel, kinds: set) -> dict:
    return {"text": text, "parsed": parsed.model_dump(), "chat_parsed": chat_parsed.model_dump(),
            "parsed_type": type(parsed).__name__, "event_types": sorted(kinds)}


@component(name="llmtest.surface")
def surface(data: dict) -> dict:
    """The Responses API (streamed) and both parse methods, through the sync client."""
    plain = client("plain")
    events = plain.responses.create(model=MODEL, input=data["prompt"], stream=True,
                                    max_output_tokens=data["max_tokens"])
    kinds, parts = set(), []
    for event in events:
        kinds.add(event.type)
        if event.type == "response.output_text.delta":
            parts.append(event.delta)
    parsed = plain.responses.parse(model=MODEL, input=data["prompt"], text_format=Verdict)
    chat = plain.chat.completions.parse(model=MODEL, response_format=Verdict,
                                        messages=[{"role": "user", "content": data["prompt"]}])
    return _surface_result("".join(parts), parsed.output_parsed, chat.choices[0].message.parsed,
                           kinds)


@component(name="llmtest.async_surface")
async def async_surface(data: dict) -> dict:
    """The same through the async client, from an async component."""
    aclient = async_client(data.get("client", "plain"))
    events = await aclient.responses.create(model=MODEL, input=data["prompt"], stream=True,
                                            max_output_tokens=data["max_tokens"])
    kinds, parts = set(), []
    async for event in events:
        kinds.add(event.type)
        if event.type == "response.output_text.delta":
            parts.append(event.delta)
    parsed = await aclient.responses.parse(model=MODEL, input=data["prompt"], text_format=Verdict)
    chat = await aclient.chat.completions.parse(
        model=MODEL, response_format=Verdict, messages=[{"role": "user", "content": data["prompt"]}])
    return _surface_result("".join(parts), parsed.output_parsed, chat.choices[0].message.parsed,
                           kinds)


surfaced = flowkit.Workflow("llmtest_surface", [surface], input_schema=prompt_schema, queue=QUEUE)
async_surfaced = flowkit.Workflow("llmtest_async_surface", [async_surface],
                                  input_schema=prompt_schema, queue=QUEUE)
async_surfaced_on_gevent = flowkit.Workflow("llmtest_async_surface_gevent", [async_surface],
                                            input_schema=prompt_schema, queue=GEVENT_QUEUE)


# -- durable tool loops ----------------------------------------------------------------------

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@component(name="llmtest.lookup")
def lookup(args: dict) -> dict:
    """A tool with a side effect the tests count: one list entry per execution. The fifth
    execution of a run's first attempt holds at the test's gate (a worker is killed there)."""
    ctx = flowkit.context()
    redis = get_store().redis
    done = redis.rpush(f"toolcalls:{ctx.run_id}", ctx.attempt)
    if done == 5 and ctx.attempt == 1 and redis.exists(f"hold-fifth:{ctx.run_id}"):
        redis.rpush(f"waiting:{ctx.run_id}:lookup", ctx.attempt)
        redis.blpop(f"gate:{ctx.run_id}:lookup", timeout=60)
    return {"city": args.get("city"), "weather": "sunny", "call": done}


@component(name="llmtest.alookup")
async def alookup(args: dict) -> dict:
    """The async twin of :func:`lookup` (no gate)."""
    done = get_store().redis.rpush(f"toolcalls:{flowkit.context().run_id}", 1)
    return {"city": args.get("city"), "weather": "rainy", "call": done}


def _loop_result(result: flowkit.llm.ToolLoopResult) -> dict:
    return {"output": result.output, "turns": result.turns, "calls": len(result.tool_calls)}


@component(name="llmtest.agent_loop")
def agent_loop(data: dict) -> dict:
    result = flowkit.llm.run_tool_loop(
        client("plain"), model=MODEL, api=data.get("api", "chat"), max_turns=data["max_turns"],
        messages=[{"role": "user", "content": data["prompt"]}], input=data["prompt"],
        tools=[flowkit.llm.tool(lookup, CITY, "The weather in a city.")],
    )
    return _loop_result(result)


@component(name="llmtest.async_agent_loop")
async def async_agent_loop(data: dict) -> dict:
    result = await flowkit.llm.arun_tool_loop(
        async_client("plain"), model=MODEL, api=data.get("api", "responses"),
        max_turns=data["max_turns"], messages=[{"role": "user", "content": data["prompt"]}],
        input=data["prompt"], tools=[flowkit.llm.tool(alookup, CITY, "The weather in a city.")],
    )
    return _loop_result(result)


loop_schema = {"prompt": fields.String(required=True), "api": fields.String(),
               "max_turns": fields.Integer(load_default=12)}
looping = flowkit.Workflow("llmtest_tool_loop", [agent_loop], input_schema=loop_schema,
                           queue=QUEUE)
async_looping = flowkit.Workflow("llmtest_async_tool_loop", [async_agent_loop],
                                 input_schema=loop_schema, queue=QUEUE)
#: Served only by the workers of tests/chaos/test_tool_loop_sigkill.py.
TOOL_LOOP_QUEUE = "llm-tool-loop"
crash_looping = flowkit.Workflow("llmtest_crash_tool_loop", [agent_loop], input_schema=loop_schema,
                                 queue=TOOL_LOOP_QUEUE)


# -- an OpenAI Agents SDK agent in a step ------------------------------------------------------


@function_tool
def city_weather(city: str) -> str:
    """The weather in a city (a side effect counted like :func:`lookup`'s, gated alike)."""
    return json.dumps(lookup.fn({"city": city}))


weather_agent = Agent(name="weather", instructions="Answer with the weather of each city.",
                      tools=[city_weather], model=MODEL)


@component(name="llmtest.agent")
async def run_weather_agent(data: dict) -> dict:
    result = await run_agent(weather_agent, data["prompt"], client=async_client("plain"),
                             max_turns=data["max_turns"])
    return {"output": result.final_output, "turns": len(result.raw_responses),
            "calls": sum(1 for item in result.new_items if item.type == "tool_call_output_item")}


@component(name="llmtest.streamed_agent")
async def run_weather_agent_streamed(data: dict) -> dict:
    """The same agent through run_agent_streamed, counting the text deltas it read."""
    result = run_agent_streamed(weather_agent, data["prompt"], client=async_client("plain"),
                                max_turns=data["max_turns"])
    deltas = 0
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas += 1
    return {"output": result.final_output, "turns": len(result.raw_responses), "deltas": deltas,
            "calls": sum(1 for item in result.new_items if item.type == "tool_call_output_item")}


agent_in_a_step = flowkit.Workflow("llmtest_agent", [run_weather_agent], input_schema=loop_schema,
                                   queue=QUEUE)
streamed_agent_in_a_step = flowkit.Workflow("llmtest_streamed_agent", [run_weather_agent_streamed],
                                            input_schema=loop_schema, queue=QUEUE)
crash_agent = flowkit.Workflow("llmtest_crash_agent", [run_weather_agent], input_schema=loop_schema,
                               queue=TOOL_LOOP_QUEUE)
crash_streamed_agent = flowkit.Workflow("llmtest_crash_streamed_agent",
                                        [run_weather_agent_streamed], input_schema=loop_schema,
                                        queue=TOOL_LOOP_QUEUE)


#: The stream :func:`astream_break` stopped reading, kept as a component may keep one (a
#: list of streams): the garbage collector does not close it then.
_kept_streams: list = []


async def _astream(data: dict):
    return await async_client("plain").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": data["prompt"]}],
        max_tokens=data["max_tokens"], stream=True)


@component(name="llmtest.astream_break")
async def astream_break(data: dict) -> dict:
    """Stops reading its async stream at the first words, without closing it."""
    stream = await _astream(data)
    _kept_streams[:] = [stream]
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return {"first": chunk.choices[0].delta.content}
    return {"first": None}


@component(name="llmtest.astream")
async def astream(data: dict) -> dict:
    """Reads its async stream to the end (the tests cancel its run half-way)."""
    stream = await _astream(data)
    _kept_streams[:] = [stream]
    return {"text": "".join([c.choices[0].delta.content or "" async for c in stream
                             if c.choices])}


@component(name="llmtest.agather")
async def agather(data: dict) -> dict:
    """A long completion gathered with a check that fails at once."""
    async def check() -> None:
        await asyncio.sleep(0.2)
        raise ValueError("the check failed")

    answer, _ = await asyncio.gather(
        async_client("plain").chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": data["prompt"]}],
            max_tokens=data["max_tokens"]),
        check())
    return {"text": answer.choices[0].message.content}


async_stream_broken = flowkit.Workflow("llmtest_astream_break", [astream_break],
                                       input_schema=prompt_schema, queue=QUEUE)
async_gathered = flowkit.Workflow("llmtest_agather", [agather], input_schema=prompt_schema,
                                  queue=QUEUE)
async_streaming = flowkit.Workflow("llmtest_astream", [astream], input_schema=prompt_schema,
                                   queue=QUEUE)


# -- what a step's retry makes again, and what a stream's span says -------------------------

#: A step retry as the README prescribes for streams broken half-way (quick here).
STEP_RETRY = {"attempts": 3, "backoff": flowkit.exponential(0.01, 0.02)}


@component(name="llmtest.respond_stream")
def respond_stream(data: dict) -> dict:
    """A streamed Responses API call, read to its end."""
    events = client("plain").responses.create(model=MODEL, input=data["prompt"], stream=True,
                                              max_output_tokens=data["max_tokens"])
    return {"text": "".join(e.delta for e in events if e.type == "response.output_text.delta")}


@component(name="llmtest.parse_chat")
def parse_chat(data: dict) -> dict:
    chat = client("plain").chat.completions.parse(
        model=MODEL, response_format=Verdict, messages=[{"role": "user", "content": data["prompt"]}])
    return chat.choices[0].message.parsed.model_dump()


@component(name="llmtest.stream_n")
def stream_n(data: dict) -> dict:
    """A streamed chat with n choices: each choice's text, as the caller reads it."""
    texts: dict[int, str] = {}
    for chunk in _ask("plain", data["prompt"], max_tokens=data["max_tokens"], stream=True,
                      n=data["n"]):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    return {"texts": [texts[i] for i in sorted(texts)]}


@component(name="llmtest.stream_tools")
def stream_tools(data: dict) -> dict:
    """A streamed turn offering a tool: the model calls it."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}]
    calls: dict[int, dict] = {}
    for chunk in _ask("plain", data["prompt"], stream=True, tools=tools):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
    return {"tool_calls": [calls[i] for i in sorted(calls)]}


@component(name="llmtest.stream_response_tools")
def stream_response_tools(data: dict) -> dict:
    """A streamed Responses turn offering a tool: the model calls it."""
    tools = [{"type": "function", "name": "get_weather", "parameters": CITY}]
    events = client("plain").responses.create(model=MODEL, input=data["prompt"], stream=True,
                                              tools=tools)
    done = [e.response for e in events if e.type == "response.completed"]
    return {"tool_calls": [{"name": item.name, "arguments": item.arguments}
                           for item in done[0].output if item.type == "function_call"]}


retry_schema = {**prompt_schema, "n": fields.Integer(load_default=1)}
ask_retried = flowkit.Workflow("llmtest_ask_retried", [ask.retry(**STEP_RETRY)],
                               input_schema=prompt_schema, queue=QUEUE)
ask_retried_on_bad_request = flowkit.Workflow(
    "llmtest_ask_retried_on_400",
    [ask.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.02), retry_on=openai.BadRequestError)],
    input_schema=prompt_schema, queue=QUEUE)


@component(name="llmtest.tells_in_a_sub_step")
def tells_in_a_sub_step(data: dict) -> dict:
    """The streaming call wrapped in a component called inside this step: its retry runs
    in place, inside this step's attempt."""
    return stream.retry(**STEP_RETRY)(data)


sub_step_stream_retried = flowkit.Workflow("llmtest_sub_step_stream_retried",
                                           [tells_in_a_sub_step], input_schema=prompt_schema,
                                           queue=QUEUE)
stream_retried = flowkit.Workflow("llmtest_stream_retried", [stream.retry(**STEP_RETRY)],
                                  input_schema=prompt_schema, queue=QUEUE)
astream_retried = flowkit.Workflow("llmtest_astream_retried", [astream.retry(**STEP_RETRY)],
                                   input_schema=prompt_schema, queue=QUEUE)
respond_stream_retried = flowkit.Workflow(
    "llmtest_respond_stream_retried", [respond_stream.retry(**STEP_RETRY)],
    input_schema=prompt_schema, queue=QUEUE)
parse_retried = flowkit.Workflow("llmtest_parse_retried", [parse_chat.retry(**STEP_RETRY)],
                                 input_schema=prompt_schema, queue=QUEUE)
streamed_n = flowkit.Workflow("llmtest_stream_n", [stream_n], input_schema=retry_schema,
                              queue=QUEUE)
streamed_response_tools = flowkit.Workflow("llmtest_stream_response_tools",
                                           [stream_response_tools],
                                           input_schema=prompt_schema, queue=QUEUE)
streamed_tools = flowkit.Workflow("llmtest_stream_tools", [stream_tools],
                                  input_schema=prompt_schema, queue=QUEUE)
stream_timed_out = flowkit.Workflow("llmtest_stream_timed_out", [stream.timeout(0.5)],
                                    input_schema=prompt_schema, queue=QUEUE)
astream_timed_out = flowkit.Workflow("llmtest_astream_timed_out", [astream.timeout(0.5)],
                                     input_schema=prompt_schema, queue=QUEUE)


@component(name="llmtest.stream_or_not")
def stream_or_not(data: dict) -> dict:
    """Its streamed sub-step times out before its first words are sent; it goes on
    without it."""
    try:
        return stream.timeout(0.2)(data)
    except flowkit.StepTimeout:
        return {"text": None}


sub_stream_timed_out = flowkit.Workflow("llmtest_sub_stream_timed_out", [stream_or_not],
                                        input_schema=prompt_schema, queue=QUEUE)
