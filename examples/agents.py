"""Durable agents: an async workflow whose steps call the Responses API, run a tool loop
and run an OpenAI Agents SDK agent, each model call and tool call checkpointed.

    python -m examples.agents "a weekend in Lisbon"

runs it against a private Redis and the local OpenAI-compatible server (set
OPENAI_API_KEY to use OpenAI), with a worker in this process, and prints the run's
stream. Needs the ``openai-agents`` extra. Not imported by ``examples`` (the demo does
not need the Agents SDK).
"""

from __future__ import annotations

import argparse
import json
import os

from agents import Agent, function_tool
from marshmallow import fields
from pydantic import BaseModel

import flowkit
import flowkit.llm
from flowkit import component
from flowkit.llm.agents_sdk import run_agent

QUEUE = "agents-example"
_client: flowkit.llm.AsyncOpenAI | None = None


def llm() -> flowkit.llm.AsyncOpenAI:
    """One client per process, built on first use so it reads the worker's environment."""
    global _client
    if _client is None:
        _client = flowkit.llm.client_from_env(asynchronous=True)
    return _client


class Brief(BaseModel):
    """The structured brief the first step asks the model for."""

    destination: str
    days: int


@component(name="agents_example.forecast")
def forecast(args: dict) -> dict:
    """A tool: in real life an API call with a cost or a side effect; here a lookup."""
    return {"city": args.get("city"), "forecast": "sunny, 24C"}


@function_tool
def book_table(city: str) -> str:
    """Book a table for dinner in a city (a side effect: done once, even after a crash)."""
    return json.dumps({"city": city, "booked": True})


planner = Agent(
    name="planner",
    instructions="Plan the trip; book dinner with the tool.",
    tools=[book_table],
    model=flowkit.llm.default_model(),
)


@component(name="agents_example.brief")
async def brief(data: dict) -> dict:
    """Structured output through the Responses API (streamed text goes to the run's stream)."""
    parsed = await llm().responses.parse(
        model=flowkit.llm.default_model(), input=data["trip"], text_format=Brief
    )
    return {"trip": data["trip"], "brief": parsed.output_parsed.model_dump()}


@component(name="agents_example.weather")
async def weather(data: dict) -> dict:
    """A durable tool loop: each model turn and each forecast call is a checkpointed sub-step."""
    result = await flowkit.llm.arun_tool_loop(
        llm(),
        model=flowkit.llm.default_model(),
        api="responses",
        input=data["trip"],
        max_turns=6,
        tools=[
            flowkit.llm.tool(
                forecast,
                {"type": "object", "properties": {"city": {"type": "string"}}},
                "The weather forecast for a city.",
            )
        ],
    )
    return {**data, "weather": result.output, "forecasts": len(result.tool_calls)}


@component(name="agents_example.plan")
async def plan(data: dict) -> dict:
    """An Agents SDK agent in a step: its model calls and tool calls are checkpointed."""
    result = await run_agent(planner, f"Plan {data['trip']}", client=llm(), max_turns=6)
    flowkit.emit(result.final_output)
    return {**data, "plan": result.final_output}


trip = flowkit.Workflow(
    "agents_example",
    [brief, weather, plan],
    input_schema={"trip": fields.String(required=True)},
    queue=QUEUE,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trip", nargs="?", default="a weekend in Lisbon")
    args = parser.parse_args(argv)
    from flowkit import config
    from flowkit.testing import FakeLLMServer, InThreadWorker, LocalRedis

    with LocalRedis() as redis, FakeLLMServer(tool_turns=1) as server:
        os.environ["FLOWKIT_REDIS_URL"] = redis.url
        os.environ.setdefault("FLOWKIT_LLM_FAKE_URL", server.base_url)
        config.reset()
        app = flowkit.create_celery_app("flowkit-agents-example")
        with InThreadWorker(app, queues=(QUEUE,), name="agents-example"):
            run = trip.start({"trip": args.trip})
            output = run.result(timeout=120)
            for event in run.events():
                print(event.type, event.data.get("step", ""), flush=True)
            print(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
