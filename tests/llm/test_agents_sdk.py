"""An OpenAI Agents SDK agent inside a step (flowkit.llm.agents_sdk.run_agent, and streamed:
run_agent_streamed), through the real SDKs against the fake server: its model calls and tool
calls are checkpointed sub-steps, each model call an LLM span with tokens and cost."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from flowkit.engine import trace
from flowkit.llm import AsyncOpenAI
from flowkit.llm.agents_sdk import run_agent, run_agent_streamed
from flowkit.store import get_store
from tests.conftest import ROOT
from tests.llm import workflows as wf

WAIT = 60


def sub_steps(run) -> list[str]:
    """The components of the run's step's checkpointed sub-steps, in call order."""
    step = next(e.data["step"] for e in run.events() if e.type == "step.completed")
    keys = sorted(
        (k for k in get_store().checkpoints(run.id) if k.startswith(f"{step}/")),
        key=lambda k: int(k.split("/")[1].split(":")[0]),
    )
    return [k.rsplit(":", 1)[1] for k in keys]


def llm_spans(run) -> list[dict]:
    return [s for s in trace.read(run.id) if s["kind"] == "llm"]


def test_outside_a_run_the_agent_simply_runs(servers):
    primary, _ = servers
    primary.configure(tool_turns=1)
    seen: list[str] = []
    agent = wf.Agent(
        name="plain",
        instructions="Use the tool once.",
        model=wf.MODEL,
        tools=[
            wf.function_tool(lambda city: seen.append(city) or "sunny", name_override="weather")
        ],
    )
    result = asyncio.run(
        run_agent(
            agent, "weather in Oslo?", client=AsyncOpenAI(api_key="sk-k", base_url=primary.base_url)
        )
    )
    assert result.final_output and len(seen) == 1
    assert [r["path"] for r in primary.stats.requests] == ["/v1/responses"] * 2


@pytest.mark.integration
def test_inside_a_run_each_model_call_and_tool_call_is_a_checkpointed_sub_step(llm):
    primary, _ = llm
    primary.configure(tool_turns=3)
    run = wf.agent_in_a_step.start({"prompt": "weather in three cities", "max_turns": 10})
    out = run.result(WAIT)
    assert out["turns"] == 4 and out["calls"] == 3 and out["output"]
    model, tool = "flowkit.agents.model_call", "flowkit.agents.tool_call"
    assert sub_steps(run) == [model, tool] * 3 + [model]
    assert get_store().redis.llen(f"toolcalls:{run.id}") == 3
    spans = llm_spans(run)
    assert len(spans) == 4 and all(s["operation"] == "responses" for s in spans)
    assert all(s["prompt_tokens"] > 0 and s["cost"] is not None for s in spans)


def test_outside_a_run_the_streamed_agent_simply_streams(servers):
    primary, _ = servers
    primary.configure(tool_turns=1)
    agent = wf.Agent(name="plain", instructions="Use the tool once.", model=wf.MODEL,
                     tools=[wf.function_tool(lambda city: "sunny", name_override="weather")])

    async def follow() -> tuple[list[str], object]:
        result = run_agent_streamed(
            agent, "weather in Oslo?", client=AsyncOpenAI(api_key="sk-k", base_url=primary.base_url))
        kinds = [e.data.type async for e in result.stream_events() if e.type == "raw_response_event"]
        return kinds, result

    kinds, result = asyncio.run(follow())
    assert result.final_output and len(result.raw_responses) == 2
    assert kinds.count("response.completed") == 2 and "response.output_text.delta" in kinds


@pytest.mark.integration
def test_a_streamed_agent_in_a_run_streams_and_checkpoints_each_call(llm):
    primary, _ = llm
    primary.configure(tool_turns=3)
    run = wf.streamed_agent_in_a_step.start({"prompt": "weather in three cities", "max_turns": 10})
    out = run.result(WAIT)
    assert out["turns"] == 4 and out["calls"] == 3 and out["output"] and out["deltas"] > 0
    model, tool = "flowkit.agents.model_stream", "flowkit.agents.tool_call"
    assert sub_steps(run) == [model, tool] * 3 + [model]
    streamed = "".join(e.data["chunk"] for e in run.events() if e.type == "step.output")
    assert streamed == out["output"]  # the final answer's tokens reached the run's stream
    spans = llm_spans(run)
    assert len(spans) == 4 and all(s["operation"] == "responses" for s in spans)


@pytest.mark.integration
def test_the_example_runs_its_agent_workflow_against_the_local_server(redis_server):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FLOWKIT_") and k != "OPENAI_API_KEY"
    }
    result = subprocess.run(
        [sys.executable, "-m", "examples.agents", "a weekend in Lisbon"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Event loop is closed" not in result.stderr
    lines = result.stdout.splitlines()
    for step in ("0:agents_example.brief", "1:agents_example.weather", "2:agents_example.plan"):
        assert f"step.completed {step}" in lines
    output = json.loads(result.stdout[result.stdout.index("{") :])
    assert output["brief"] == {"destination": "draft", "days": 1}
    assert output["forecasts"] == 1 and output["plan"] and output["weather"]
