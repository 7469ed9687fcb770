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

A tool call the loop cannot make (a tool it was not given, arguments that are not JSON) is
answered to the model as that call's output, saying what was wrong, as the OpenAI Agents
SDK answers a call whose arguments are not JSON; the model then calls again. Raising
instead failed the step on an answer already checkpointed: each retry of the step, and of
the run, replayed the same answer without asking the model again, so the run could never
succeed. Failing the turn before its checkpoint would have asked again, but only where the
step has retries, and a ``temperature=0`` request sent again as it was gets the same
answer (from the client's ``cache_ttl`` cache, or from the model).
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
    """The model called a tool the loop was not given. No longer raised by the loops: the
    call is answered to the model, which then calls again (kept for code that catches it)."""


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


#: A call the model asked for: (call id, tool name, its Tool or None when it cannot be
#: made, the arguments (raw when it cannot), why it cannot be made or None).
_Pending = tuple[str, str, Tool | None, Any, str | None]


@dataclass
class ToolLoopResult:
    """How the loop ended: the model's final text, the whole conversation (messages or
    Responses input items, JSON), the turns taken and every tool call with its output (one
    that could not be made, with ``output`` None and the ``error`` the model was told)."""

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
        if params.get("stream"):
            # each turn's whole answer is its checkpoint: a stream has none to keep
            raise ConfigError(
                "run_tool_loop and arun_tool_loop do not stream (stream=True): each model "
                "turn is checkpointed whole. Drop stream=True; to stream text as it comes, "
                "call client.chat.completions.create(stream=True) (or responses.create) in "
                "the step yourself, with tools=[...], and run the tools it asks for.")
        #: the calls of the last answer: (call id, tool name, its Tool, arguments, and the
        #: reason it cannot be made: None, or the Tool None and the raw arguments)
        self.pending: list[_Pending] = []
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
        self.pending = [self._call(call_id, name, args) for call_id, name, args in asked]

    def _call(self, call_id: str, name: str, raw: Any) -> _Pending:
        """A call the model asked for, checked: the reason it cannot be made, if any, is
        what the model is told (the answer is checkpointed already: raising here failed
        every replay of it alike)."""
        used = self.tools.get(name)
        if used is None:
            return call_id, name, None, raw, (
                f"Error: there is no tool named {name!r}. The tools you can call are: "
                f"{', '.join(self.tools)}. Call one of them.")
        try:
            arguments = json.loads(raw or "{}")
        except (TypeError, ValueError) as exc:
            return call_id, name, None, raw, (
                f"Error: the arguments of this call to {name!r} are not valid JSON ({exc}). "
                "Call it again with a JSON object that fits its parameters.")
        if not isinstance(arguments, dict):
            arguments = {"value": arguments}
        unfit = _unfit(used.parameters, arguments)
        if unfit is not None:  # JSON of another shape: the tool raised, at every replay
            return call_id, name, None, raw, (
                f"Error: the arguments of this call to {name!r} do not fit its parameters "
                f"({unfit}). Call it again with arguments that do.")
        return call_id, name, used, arguments, None

    def answer(self, call_id: str, used: Tool, arguments: dict[str, Any], output: Any) -> None:
        self._reply(call_id, output if isinstance(output, str) else json.dumps(output))
        self.calls.append({"tool": used.name, "arguments": arguments, "output": output})

    def refuse(self, call_id: str, name: str, raw: Any, error: str) -> None:
        """A call that could not be made: the model is told why, as the call's output."""
        self._reply(call_id, error)
        self.calls.append({"tool": name, "arguments": raw, "output": None, "error": error})

    def _reply(self, call_id: str, text: str) -> None:
        if self.api == "chat":
            self.items.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            self.items.append({"type": "function_call_output", "call_id": call_id, "output": text})

    def result(self, turns: int) -> ToolLoopResult:
        return ToolLoopResult(self.output, self.items, turns, self.calls)


def _unfit(parameters: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` do not fit a tool's ``parameters`` (its JSON Schema), or None."""
    import jsonschema  # only here: a tenth of `import flowkit`, and only tool loops need it

    try:
        validator = jsonschema.validators.validator_for(parameters)(parameters)
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except Exception:  # noqa: BLE001 - a schema the validator cannot read: the tool decides
        return None
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


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
        for call_id, name, used, arguments, error in conversation.pending:
            if used is None:
                conversation.refuse(call_id, name, arguments, error or "")
                continue
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
        for call_id, name, used, arguments, error in conversation.pending:
            if used is None:
                conversation.refuse(call_id, name, arguments, error or "")
                continue
            output = used.component(arguments)
            if used.component.is_async:
                output = await output
            conversation.answer(call_id, used, arguments, output)
    raise _limit(max_turns)
