"""The OpenAI Agents SDK inside a flowkit step, its model calls and tool calls checkpointed.

An Agents SDK agent loops over model turns and tool calls until it has a final output;
inside a step, a crash half-way would run the whole agent again: every model call paid
twice, every tool's side effect repeated. :func:`run_agent` runs the agent with the
SDK's own ``Runner`` and makes both kinds of call durable, as Temporal's and DBOS's
integrations do:

- each model call goes through :class:`flowkit.llm.AsyncOpenAI` (retries, failover, rate
  limits, trace span with tokens and cost) inside a checkpointed sub-step
  (``<step>/<n>:flowkit.agents.model_call``) holding the model's output items;
- each function-tool call is a checkpointed sub-step (``<step>/<n>:flowkit.agents.tool_call``)
  holding the tool's output.

A restarted step replays the agent: the SDK asks for the same calls in the same order and
gets their checkpoints back, up to where the crash was. Outside a run the agent simply
runs. Needs the ``openai-agents`` extra (``pip install flowkit[openai-agents]``).
Streaming runs (``Runner.run_streamed``) are not checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunConfig, Runner
from agents.items import ModelResponse
from agents.models.interface import Model, ModelProvider
from agents.models.openai_responses import OpenAIResponsesModel
from agents.usage import Usage
from openai.types.responses import ResponseOutputItem
from pydantic import TypeAdapter

from ..component import component
from ..context import current
from .client import AsyncOpenAI, client_from_env, default_model

_OUTPUT_ITEM: TypeAdapter[Any] = TypeAdapter(ResponseOutputItem)


async def run_agent(
    agent: Agent[Any],
    input: Any,
    *,
    client: AsyncOpenAI | None = None,
    run_config: RunConfig | None = None,
    **runner_options: Any,
) -> Any:
    """``Runner.run(agent, input)`` with its model calls made through ``client`` (default:
    :func:`flowkit.llm.client_from_env`) and, inside a step, every model call and
    function-tool call a checkpointed sub-step. Returns the SDK's ``RunResult``.
    The SDK's own tracing is off unless ``run_config`` says otherwise (flowkit's trace
    holds each call)."""
    client = client or client_from_env(asynchronous=True)
    config = run_config or RunConfig(tracing_disabled=True)
    config = dataclasses.replace(config, model_provider=DurableModelProvider(client))
    return await Runner.run(_durable_agent(agent, {}), input, run_config=config, **runner_options)


class DurableModelProvider(ModelProvider):
    """Models by name, through a flowkit client, each call a checkpointed sub-step."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    def get_model(self, model_name: str | None) -> Model:
        inner = OpenAIResponsesModel(model=model_name or default_model(), openai_client=self.client)  # type: ignore[arg-type]
        return DurableModel(inner)


class DurableModel(Model):
    """A model whose responses are checkpointed inside a run (see the module's docstring)."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        if current() is None:
            return await self.inner.get_response(*args, **kwargs)
        stored = await model_call(self.inner, args, kwargs)
        return ModelResponse(
            output=[_OUTPUT_ITEM.validate_python(item) for item in stored["output"]],
            usage=Usage(**stored["usage"]),
            response_id=stored.get("response_id"),
        )

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.stream_response(*args, **kwargs)  # not checkpointed (see above)


@component(name="flowkit.agents.model_call")
async def model_call(inner: Model, args: tuple, kwargs: dict) -> dict[str, Any]:
    """One model call of an agent, as JSON (its checkpoint)."""
    response = await inner.get_response(*args, **kwargs)
    usage = response.usage
    return {
        "output": [item.model_dump(mode="json") for item in response.output],
        "usage": {
            "requests": usage.requests,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
        },
        "response_id": response.response_id,
    }


@component(name="flowkit.agents.tool_call")
async def tool_call(invoke: Any, context: Any, name: str, arguments: str) -> Any:
    """One function-tool call of an agent; its output (JSON, else its text) is the checkpoint."""
    output = await invoke(context, arguments)
    try:
        json.dumps(output)
    except (TypeError, ValueError):
        return str(output)
    return output


def _durable_tool(tool: Any) -> Any:
    if not isinstance(tool, FunctionTool):
        return tool  # hosted tools run at the provider: their results come in the model's output
    invoke = tool.on_invoke_tool

    async def durable(context: Any, arguments: str) -> Any:
        if current() is None:
            return await invoke(context, arguments)
        return await tool_call(invoke, context, tool.name, arguments)

    return dataclasses.replace(tool, on_invoke_tool=durable)


def _durable_agent(agent: Agent[Any], done: dict[int, Agent[Any]]) -> Agent[Any]:
    """A clone of ``agent`` (and of the agents it hands off to) with durable tools and model."""
    if id(agent) in done:
        return done[id(agent)]
    clone = agent.clone(tools=[_durable_tool(t) for t in agent.tools])
    done[id(agent)] = clone
    if isinstance(agent.model, Model) and not isinstance(agent.model, DurableModel):
        clone.model = DurableModel(agent.model)
    clone.handoffs = [
        h if isinstance(h, Handoff) else _durable_agent(h, done) for h in agent.handoffs
    ]
    return clone
