"""Durable tool loops: an OpenAI tool-calling loop whose every turn is a checkpointed sub-step.

An agent that calls tools in a loop for ten minutes must not, after a crash at minute
nine, pay for the model calls and repeat the tool calls (side effects!) it already made.
:func:`run_tool_loop` (and :func:`arun_tool_loop` for async code) runs the loop inside a
step: each model turn is a sub-step (``<step>/<n>:flowkit.llm.model_turn``) checkpointing
the SDK's answer, and each tool call is its tool component called as a sub-step, so a
restarted step replays both from their checkpoints and carries on after the last
completed call. Each turn's tokens and cost are its LLM span in the run's trace.
``max_turns`` bounds the loop (:class:`ToolLoopLimit`).

Both OpenAI APIs are spoken: Chat Completions (``api="chat"``, ``messages=``) and
Responses (``api="responses"``, ``input=``). Outside a run it is the same loop, without
checkpoints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ..component import Component, component
from ..errors import ConfigError, FlowkitError

Api = Literal["chat", "responses"]


class ToolLoopLimit(FlowkitError):
    """The model still called tools after ``max_turns`` turns."""


class UnknownTool(FlowkitError):
    """The model called a tool the loop was not given."""


@dataclass(frozen=True)
class Tool:
    """A component offered to the model as a function tool (see :func:`tool`)."""

    component: Component
    parameters: dict[str, Any]
    description: str = ""
    name: str = ""

    def spec(self, api: Api) -> dict[str, Any]:
        function = {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }
        if api == "chat":
            return {"type": "function", "function": function}
        return {"type": "function", **function}


def tool(
    component: Component, parameters: dict[str, Any], description: str = "", name: str | None = None
) -> Tool:
    """Offer ``component`` to the model as a tool taking ``parameters`` (a JSON schema of
    an object); the component is called with the arguments as one dict. Its name defaults
    to the component's, with characters OpenAI refuses in a tool name replaced by ``_``."""
    if not isinstance(component, Component):
        raise ConfigError("tool() takes a component (a function decorated with @component).")
    if not isinstance(parameters, dict):
        raise ConfigError(
            "tool(parameters=...) is a JSON schema: a dict such as "
            '{"type": "object", "properties": {...}}.'
        )
    chosen = name or "".join(c if c.isalnum() or c in "_-" else "_" for c in component.name)
    return Tool(component, parameters, description, chosen)


@dataclass
class ToolLoopResult:
    """How the loop ended: the model's final text, the whole conversation (messages or
    Responses input items, JSON), the turns taken and every tool call with its output."""

    output: str | None
    conversation: list[Any]
    turns: int
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@component(name="flowkit.llm.model_turn")
def model_turn(client: Any, api: str, request: dict[str, Any]) -> dict[str, Any]:
    """One model turn of a tool loop: the SDK's answer as JSON (a checkpoint in a run)."""
    resource = client.chat.completions if api == "chat" else client.responses
    return resource.create(**request).model_dump(mode="json", exclude_none=True)


@component(name="flowkit.llm.model_turn_async")
async def model_turn_async(client: Any, api: str, request: dict[str, Any]) -> dict[str, Any]:
    """:func:`model_turn` for the async client."""
    resource = client.chat.completions if api == "chat" else client.responses
    answer = await resource.create(**request)
    return answer.model_dump(mode="json", exclude_none=True)


class _Conversation:
    """The loop's state, API by API: what to send next and what the model asked for."""

    def __init__(
        self,
        api: Api,
        model: str,
        tools: list[Tool],
        messages: list | None,
        input: Any,
        params: dict[str, Any],
    ) -> None:
        if api not in ("chat", "responses"):
            raise ConfigError(f'api is "chat" or "responses", not {api!r}.')
        if not tools or not all(isinstance(t, Tool) for t in tools):
            raise ConfigError("tools=[...] takes flowkit.llm.tool(component, parameters) items.")
        if api == "chat" and not messages:
            raise ConfigError('api="chat" needs messages=[...].')
        if api == "responses" and not input:
            raise ConfigError('api="responses" needs input= (a string or input items).')
        self.api = api
        self.tools = {t.name: t for t in tools}
        self.params = {**params, "model": model, "tools": [t.spec(api) for t in tools]}
        if api == "chat":
            self.items = list(messages or ())
        else:
            self.items = (
                [{"role": "user", "content": input}] if isinstance(input, str) else list(input)
            )
        self.pending: list[tuple[str, Tool, dict[str, Any]]] = []
        self.calls: list[dict[str, Any]] = []
        self.output: str | None = None

    def request(self) -> dict[str, Any]:
        return {**self.params, ("messages" if self.api == "chat" else "input"): list(self.items)}

    def take(self, answer: dict[str, Any]) -> None:
        """Record the model's answer; :attr:`pending` lists the tool calls it asks for."""
        # the checkpointed JSON is read as it is: a strict pydantic round trip refuses
        # what the SDK itself accepts (fields a server leaves out)
        if self.api == "chat":
            message = answer["choices"][0]["message"]
            self.items.append(message)
            asked = [
                (c["id"], c["function"]["name"], c["function"].get("arguments"))
                for c in message.get("tool_calls") or ()
            ]
            self.output = message.get("content")
        else:
            output = answer.get("output") or []
            self.items.extend(output)
            asked = [
                (o["call_id"], o["name"], o.get("arguments"))
                for o in output
                if o.get("type") == "function_call"
            ]
            self.output = "".join(
                part.get("text", "")
                for o in output
                if o.get("type") == "message"
                for part in o.get("content") or ()
                if part.get("type") == "output_text"
            )
        self.pending = [
            (call_id, self._tool(name), _arguments(name, args)) for call_id, name, args in asked
        ]

    def answer(self, call_id: str, used: Tool, arguments: dict[str, Any], output: Any) -> None:
        text = output if isinstance(output, str) else json.dumps(output)
        if self.api == "chat":
            self.items.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            self.items.append({"type": "function_call_output", "call_id": call_id, "output": text})
        self.calls.append({"tool": used.name, "arguments": arguments, "output": output})

    def result(self, turns: int) -> ToolLoopResult:
        return ToolLoopResult(self.output, self.items, turns, self.calls)

    def _tool(self, name: str) -> Tool:
        if name not in self.tools:
            raise UnknownTool(
                f"the model called tool {name!r}, which is not among the loop's "
                f"tools ({', '.join(self.tools)})."
            )
        return self.tools[name]


def _arguments(name: str, raw: str) -> dict[str, Any]:
    try:
        arguments = json.loads(raw or "{}")
    except ValueError:
        raise FlowkitError(
            f"the model called {name!r} with arguments that are not JSON: {raw[:200]!r}"
        ) from None
    return arguments if isinstance(arguments, dict) else {"value": arguments}


def _limit(max_turns: int) -> ToolLoopLimit:
    return ToolLoopLimit(
        f"the model still called tools after {max_turns} turns; raise "
        "max_turns or make the task smaller."
    )


def run_tool_loop(
    client: Any,
    *,
    model: str,
    tools: list[Tool],
    messages: list | None = None,
    input: Any = None,
    api: Api = "chat",
    max_turns: int = 10,
    **params: Any,
) -> ToolLoopResult:
    """Ask ``model`` (through a :class:`flowkit.llm.OpenAI`), run the tools it calls, hand
    their outputs back, until it answers without a tool call or ``max_turns`` model turns
    have passed. Inside a step each turn and each tool call is a checkpointed sub-step."""
    conversation = _Conversation(api, model, tools, messages, input, params)
    for turn in range(1, max_turns + 1):
        conversation.take(model_turn(client, api, conversation.request()))
        if not conversation.pending:
            return conversation.result(turn)
        for call_id, used, arguments in conversation.pending:
            conversation.answer(call_id, used, arguments, used.component(arguments))
    raise _limit(max_turns)


async def arun_tool_loop(
    client: Any,
    *,
    model: str,
    tools: list[Tool],
    messages: list | None = None,
    input: Any = None,
    api: Api = "chat",
    max_turns: int = 10,
    **params: Any,
) -> ToolLoopResult:
    """:func:`run_tool_loop` for async code, through a :class:`flowkit.llm.AsyncOpenAI`;
    tools may be async or sync components."""
    conversation = _Conversation(api, model, tools, messages, input, params)
    for turn in range(1, max_turns + 1):
        conversation.take(await model_turn_async(client, api, conversation.request()))
        if not conversation.pending:
            return conversation.result(turn)
        for call_id, used, arguments in conversation.pending:
            output = used.component(arguments)
            if used.component.is_async:
                output = await output
            conversation.answer(call_id, used, arguments, output)
    raise _limit(max_turns)
