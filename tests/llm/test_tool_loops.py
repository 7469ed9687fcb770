"""Durable tool loops (flowkit.llm.run_tool_loop / arun_tool_loop) through the real SDK
against the fake server: both APIs, both clients; inside a run each model turn and each
tool call is a checkpointed sub-step with its tokens and cost in the trace."""

from __future__ import annotations

import asyncio

import pytest

import flowkit
from flowkit.engine import trace
from flowkit.errors import ConfigError
from flowkit.llm import AsyncOpenAI, OpenAI, ToolLoopLimit, tool
from flowkit.store import get_store
from flowkit.testing.fake_openai import BAD_ARGUMENTS, UNKNOWN_TOOL, WRONG_ARGUMENTS
from tests.llm import workflows as wf

WAIT = 60
ASK = [{"role": "user", "content": "weather in three cities"}]

ran: list[dict] = []


@flowkit.component(name="llmtest.outside_lookup")
def outside_lookup(args: dict) -> dict:
    ran.append(args)
    return {"weather": "sunny"}


@flowkit.component(name="llmtest.outside_alookup")
async def outside_alookup(args: dict) -> str:
    ran.append(args)
    return "rainy"


@pytest.fixture
def three_turns(servers):
    primary, _ = servers
    primary.configure(tool_turns=3)
    ran.clear()
    return primary


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_outside_a_run_the_loop_calls_tools_until_the_model_answers(three_turns, api):
    client = OpenAI(api_key="sk-k", base_url=three_turns.base_url)
    result = flowkit.llm.run_tool_loop(
        client,
        model="gpt-4o-mini",
        api=api,
        messages=ASK,
        input=ASK[0]["content"],
        tools=[tool(outside_lookup, wf.CITY, "The weather in a city.")],
    )
    assert result.turns == 4 and len(result.tool_calls) == 3 == len(ran)
    assert result.output and result.tool_calls[0]["output"] == {"weather": "sunny"}
    assert result.tool_calls[0]["tool"] == "llmtest_outside_lookup"
    sent = [r for r in three_turns.stats.requests if r["status"] == 200]
    assert len(sent) == 4
    # the conversation carries each call and its answer: 1 + 3 x 2 + the final answer
    assert len(result.conversation) == 8


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_the_async_loop_awaits_async_tools(three_turns, api):
    client = AsyncOpenAI(api_key="sk-k", base_url=three_turns.base_url)
    result = asyncio.run(
        flowkit.llm.arun_tool_loop(
            client,
            model="gpt-4o-mini",
            api=api,
            messages=ASK,
            input=ASK[0]["content"],
            tools=[tool(outside_alookup, wf.CITY)],
        )
    )
    assert result.turns == 4 and [c["output"] for c in result.tool_calls] == ["rainy"] * 3


def test_the_loop_is_bounded_and_refuses_bad_input(three_turns):
    client = OpenAI(api_key="sk-k", base_url=three_turns.base_url)
    lookup = tool(outside_lookup, wf.CITY)
    with pytest.raises(ToolLoopLimit, match="after 2 turns"):
        flowkit.llm.run_tool_loop(client, model="m", messages=ASK, tools=[lookup], max_turns=2)
    with pytest.raises(ConfigError, match="needs input="):
        flowkit.llm.run_tool_loop(client, model="m", api="responses", tools=[lookup])
    with pytest.raises(ConfigError, match="takes a component"):
        tool(lambda args: args, wf.CITY)


@pytest.mark.parametrize("loop", ["sync", "async"])
def test_the_loop_refuses_stream_true_saying_what_to_do(three_turns, loop):
    # it failed at the first turn with AttributeError: 'Stream' object has no attribute
    # 'model_dump', after the request was sent (and billed)
    lookup = tool(outside_lookup, wf.CITY)
    with pytest.raises(ConfigError, match=r"do not stream \(stream=True\).*Drop stream=True"):
        if loop == "sync":
            flowkit.llm.run_tool_loop(OpenAI(api_key="sk-k", base_url=three_turns.base_url),
                                      model="m", messages=ASK, tools=[lookup], stream=True)
        else:
            asyncio.run(flowkit.llm.arun_tool_loop(
                AsyncOpenAI(api_key="sk-k", base_url=three_turns.base_url), model="m",
                messages=ASK, tools=[lookup], stream=True))
    assert three_turns.stats.requests == []


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("mistake", [BAD_ARGUMENTS, WRONG_ARGUMENTS, UNKNOWN_TOOL])
def test_a_tool_call_the_loop_cannot_make_is_told_to_the_model_which_calls_again(
        servers, api, mistake):
    # the first answer calls a tool wrong; the model is told so, as that call's output, and
    # its next answer calls it right (it raised, on an answer a run had checkpointed)
    primary, _ = servers
    primary.configure(tool_turns=2, script=(mistake,))
    ran.clear()
    result = flowkit.llm.run_tool_loop(
        OpenAI(api_key="sk-k", base_url=primary.base_url), model="gpt-4o-mini", api=api,
        messages=ASK, input=ASK[0]["content"], tools=[tool(outside_lookup, wf.CITY)],
    )
    assert result.turns == 3 and len(ran) == 1
    refused, made = result.tool_calls
    assert refused["output"] is None and made["output"] == {"weather": "sunny"}
    if mistake == BAD_ARGUMENTS:
        assert refused["tool"] == "llmtest_outside_lookup"
        assert refused["error"].startswith("Error: the arguments of this call to "
                                           "'llmtest_outside_lookup' are not valid JSON")
        assert refused["arguments"] == '{"city": '
    elif mistake == WRONG_ARGUMENTS:  # JSON, of another shape: the tool raised at every replay
        assert refused["error"] == ("Error: the arguments of this call to "
                                    "'llmtest_outside_lookup' do not fit its parameters ('city' "
                                    "is a required property). Call it again with arguments "
                                    "that do.")
    else:
        assert refused["tool"] == "llmtest_outside_lookup_v2"
        assert refused["error"] == ("Error: there is no tool named 'llmtest_outside_lookup_v2'. "
                                    "The tools you can call are: llmtest_outside_lookup. Call "
                                    "one of them.")
    told = [item for item in result.conversation
            if item.get("role") == "tool" or item.get("type") == "function_call_output"]
    assert [t.get("content", t.get("output")) for t in told][0] == refused["error"]
    assert len(primary.stats.requests) == 3


@pytest.mark.integration
@pytest.mark.parametrize("workflow", ["looping", "async_looping"])
def test_inside_a_run_each_turn_and_tool_call_is_a_checkpointed_sub_step(llm, workflow):
    primary, _ = llm
    primary.configure(tool_turns=3)
    run = getattr(wf, workflow).start({"prompt": "weather please"})
    assert run.result(WAIT) == {"output": run.refresh().output["output"], "turns": 4, "calls": 3}
    step = next(e.data["step"] for e in run.events() if e.type == "step.completed")
    subs = sorted(
        (k for k in get_store().checkpoints(run.id) if k.startswith(f"{step}/")),
        key=lambda k: int(k.split("/")[1].split(":")[0]),
    )
    turn = (
        "flowkit.llm.model_turn_async" if workflow == "async_looping" else "flowkit.llm.model_turn"
    )
    tool_name = "llmtest.alookup" if workflow == "async_looping" else "llmtest.lookup"
    assert [k.split(":", 2)[-1] for k in subs] == [turn, tool_name] * 3 + [turn]
    spans = [s for s in trace.read(run.id) if s["kind"] == "llm"]
    assert len(spans) == 4
    assert all(s["prompt_tokens"] > 0 and s["cost"] is not None for s in spans)
    assert spans[0]["output"]["tool_calls"][0]["name"] in ("llmtest_lookup", "llmtest_alookup")
    assert int(get_store().redis.llen(f"toolcalls:{run.id}")) == 3


@pytest.mark.integration
@pytest.mark.parametrize("workflow", ["looping", "async_looping"])
def test_inside_a_run_a_bad_tool_call_does_not_fail_the_run(llm, workflow):
    # the answer with the bad call is checkpointed, and replayed as it was by a restart: the
    # model's correction comes from its own next turn. It failed the step on the
    # checkpointed answer, and every retry (of the step, of the run) replayed it, for ever
    primary, _ = llm
    primary.configure(tool_turns=2, script=(BAD_ARGUMENTS,))
    run = getattr(wf, workflow).start({"prompt": "weather please"})
    assert run.result(WAIT)["turns"] == 3 and run.refresh().output["calls"] == 2
    assert len(primary.stats.requests) == 3
    assert int(get_store().redis.llen(f"toolcalls:{run.id}")) == 1
