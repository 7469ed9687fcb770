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

:func:`run_agent_streamed` is ``Runner.run_streamed`` made durable the same way: each
model call streams its events to the caller as they come (and its tokens to the run's
stream, as every streamed call through flowkit's client does), and is checkpointed
(``<step>/<n>:flowkit.agents.model_stream``) when its ``response.completed`` arrives,
before the SDK sees that event and acts on it. A replayed call yields one
``response.completed`` rebuilt from its checkpoint (no deltas: they were streamed the
first time).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agents import Agent, FunctionTool, Handoff, RunConfig, Runner, RunResultStreaming
from agents.items import ModelResponse
from agents.models.interface import Model, ModelProvider
from agents.models.openai_responses import OpenAIResponsesModel
from agents.usage import Usage
from openai.types.responses import Response, ResponseCompletedEvent, ResponseOutputItem
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
    config = _durable_config(client, run_config)
    return await Runner.run(_durable_agent(agent, {}), input, run_config=config, **runner_options)


def run_agent_streamed(
    agent: Agent[Any],
    input: Any,
    *,
    client: AsyncOpenAI | None = None,
    run_config: RunConfig | None = None,
    **runner_options: Any,
) -> RunResultStreaming:
    """``Runner.run_streamed(agent, input)``, durable as :func:`run_agent` is: iterate its
    ``stream_events()``, then read ``final_output``. Inside a step, every model call and
    function-tool call is a checkpointed sub-step, and the model's tokens reach the run's
    stream as ``step.output`` chunks while they come."""
    config = _durable_config(client, run_config)
    return Runner.run_streamed(_durable_agent(agent, {}), input, run_config=config,
                               **runner_options)


def _durable_config(client: AsyncOpenAI | None, run_config: RunConfig | None) -> RunConfig:
    client = client or client_from_env(asynchronous=True)
    config = run_config or RunConfig(tracing_disabled=True)
    return dataclasses.replace(config, model_provider=DurableModelProvider(client))


class DurableModelProvider(ModelProvider):
    """Models by name, through a flowkit client, each call a checkpointed sub-step."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    def get_model(self, model_name: str | None) -> Model:
        inner = OpenAIResponsesModel(model=model_name or default_model(),
                                     openai_client=_ModelsView(self.client))  # type: ignore[arg-type]
        return DurableModel(inner)


class _ModelsView:
    """flowkit's client as the SDK's Responses model sees it. The SDK streams through
    ``responses.with_streaming_response.create`` when the client has it (for the request
    id), which is the openai SDK's own, unwrapped: no retries, failover, rate limits, token
    streaming nor trace span. Without it here, the SDK streams through ``responses.create``
    (flowkit's), as it does for clients that have only that."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self._client = client
        self.responses = _CreateOnly(client.responses)

    def with_options(self, **options: Any) -> _ModelsView:
        return _ModelsView(self._client.with_options(**options))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class _CreateOnly:
    def __init__(self, responses: Any) -> None:
        self._responses = responses

    def __getattr__(self, name: str) -> Any:
        if name == "with_streaming_response":
            raise AttributeError(name)
        return getattr(self._responses, name)


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

    def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if current() is None:
            return self.inner.stream_response(*args, **kwargs)
        live: dict[str, ResponseCompletedEvent] = {}
        relayed: asyncio.Queue[Any] = asyncio.Queue()

        def forward(event: Any) -> None:
            if isinstance(event, ResponseCompletedEvent):
                live["completed"] = event  # handed on once its checkpoint is saved
            else:
                relayed.put_nowait(event)

        # called now, so the sub-step's key is taken in the order the SDK asks
        call = model_stream(self.inner, args, kwargs, forward)
        return _relay(call, relayed, live)


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


@component(name="flowkit.agents.model_stream")
async def model_stream(inner: Model, args: tuple, kwargs: dict,
                       forward: Callable[[Any], None]) -> dict[str, Any]:
    """One streamed model call of an agent: every event goes to ``forward`` as it comes;
    the completed response, as JSON, is the checkpoint."""
    completed = None
    async for event in inner.stream_response(*args, **kwargs):
        forward(event)
        if isinstance(event, ResponseCompletedEvent):
            completed = event.response
    if completed is None:
        raise RuntimeError("the model's stream ended without its response.completed event")
    return {
        "id": completed.id,
        "model": completed.model,
        "output": [item.model_dump(mode="json") for item in completed.output],
        "usage": completed.usage.model_dump(mode="json") if completed.usage else None,
    }


_DONE = object()


async def _relay(call: Any, relayed: asyncio.Queue[Any],
                 live: dict[str, ResponseCompletedEvent]) -> AsyncIterator[Any]:
    """The events of a streamed model call while its sub-step runs, then its
    ``response.completed``: the live one, or one rebuilt from the checkpoint."""
    task = asyncio.ensure_future(call)
    task.add_done_callback(lambda _: relayed.put_nowait(_DONE))
    try:
        while (event := await relayed.get()) is not _DONE:
            yield event
        stored = task.result()  # the call's own error, if it failed
    finally:
        if not task.done():  # the SDK stopped reading (an error, a guardrail): stop the call
            task.cancel()
    yield live.get("completed") or _completed_event(stored)


def _completed_event(stored: dict[str, Any]) -> ResponseCompletedEvent:
    # built as the openai SDK builds what a server sent: its model_construct fills nested
    # types (output items, usage details) without validating them, as providers leave out
    # fields its types require (e.g. ``cache_write_tokens``)
    response = Response.model_construct(
        id=stored["id"], object="response", created_at=time.time(), model=stored["model"],
        output=stored["output"], usage=stored["usage"], status="completed",
        parallel_tool_calls=True, tool_choice="auto", tools=[],
    )
    return ResponseCompletedEvent(type="response.completed", sequence_number=0,
                                  response=response)


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
