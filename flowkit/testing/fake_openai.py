"""A small, real OpenAI-compatible HTTP server: the demo's LLM without an API key, and the tests'.

It answers ``POST /v1/chat/completions`` (plain JSON or SSE streaming, tools and
response formats), ``POST /v1/responses`` (the Responses API: JSON or its SSE
events, function tools and ``text.format`` JSON schemas) and ``POST /v1/embeddings``
with usage counts, after a
configurable latency per request and per token, and injects faults on demand: a
share of 429s with ``Retry-After``, 500s, dropped connections, a scripted
sequence of outcomes, or the whole provider down (its port refuses connections).

It runs on aiohttp (one event loop, so a thousand concurrent slow requests cost
a thousand sleeping coroutines, not a thousand threads)::

    python -m flowkit.llm.fake_server --port 8765 --latency 0.2 --token-latency 0.03

    server = FakeLLMServer(latency=0.1).start()   # in-process, in a daemon thread
    client = flowkit.llm.OpenAI(base_url=server.base_url, api_key="fake")

``GET /_fake/stats`` reports the requests seen (for benchmarks run out of process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import hashlib
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from aiohttp import web

from .redis import free_port

_WORDS = ["the", "quick", "workflow", "streams", "every", "token", "to", "the", "reader", "while", "durable", "steps", "keep", "their", "checkpoints", "and", "a", "patient", "worker", "retries", "what", "failed", "so", "nothing", "is", "lost", "when", "a", "provider", "stumbles", "or", "a", "deploy", "restarts", "the", "fleet"]

DROP = "drop"  # a scripted outcome: close the connection without answering
#: A scripted outcome: a 429 whose ``code`` is ``insufficient_quota`` (the account's quota is
#: spent; no Retry-After).
QUOTA = "insufficient_quota"
#: A scripted outcome of a streamed request: half the tokens, then a clean end of the body,
#: without a finish_reason, usage or ``[DONE]`` (Responses: without a terminal event).
CUT = "cut"
#: Scripted outcomes of a streamed Responses request: half the text, then a
#: ``response.failed`` event, or an ``error`` event.
FAILED_EVENT = "failed_event"
ERROR_EVENT = "error_event"
#: A scripted outcome of a chat request: the answer ends with finish_reason "length".
LENGTH = "length"
#: A scripted outcome of a chat request: a 200 whose JSON body is cut short.
BAD_BODY = "bad_body"
#: Scripted outcomes of a request offering tools whose answer is a tool call: the call's
#: arguments are cut short (not JSON), are JSON of another shape (``{"town": 3}``), or it
#: names a tool the request did not offer.
BAD_ARGUMENTS = "bad_arguments"
WRONG_ARGUMENTS = "wrong_arguments"
UNKNOWN_TOOL = "unknown_tool"
_TOOL_FAULTS = (BAD_ARGUMENTS, WRONG_ARGUMENTS, UNKNOWN_TOOL)
_BODY_FAULTS = (CUT, FAILED_EVENT, ERROR_EVENT, LENGTH, BAD_BODY, *_TOOL_FAULTS)


@dataclass(frozen=True)
class Behaviour:
    """How the server answers. Shares are probabilities in 0..1, drawn per request."""

    #: Seconds before the first byte of every answer.
    latency: float = 0.0
    #: Seconds per generated token (between SSE chunks when streaming).
    token_latency: float = 0.0
    #: Seconds a chat stream waits, once its headers are sent, before its first token (a
    #: model's time to first token; ``latency`` delays the headers too).
    first_token_latency: float = 0.0
    #: Completion tokens when the request sets no max_tokens.
    completion_tokens: int = 16
    rate_429: float = 0.0
    #: ``Retry-After`` header (seconds) sent with each 429.
    retry_after: float = 1.0
    #: How a 429 says ``retry_after``: "seconds" (``Retry-After: 1``), "ms" (only
    #: ``retry-after-ms``) or "date" (``Retry-After`` as an HTTP date).
    retry_after_form: str = "seconds"
    rate_500: float = 0.0
    rate_drop: float = 0.0
    #: Outcomes of the next requests, in order: an HTTP status (429, 500, ...), "drop",
    #: QUOTA, or for a streamed request CUT, FAILED_EVENT or ERROR_EVENT.
    script: tuple[int | str, ...] = ()
    #: Bearer key required from clients; None accepts any (or none).
    api_key: str | None = None
    #: Tool-calling turns per conversation: with tools offered, the model calls one until
    #: the conversation holds this many tool results (None: whenever the last message is
    #: not a tool result).
    tool_turns: int | None = None
    #: Models served; None serves any name (an unknown one gets 404 otherwise).
    models: tuple[str, ...] | None = None
    seed: int | None = None


@dataclass
class Stats:
    """What the server saw: one record per request, and the peak of requests in flight."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def answered(self, status: int = 200) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["status"] == status]


class FakeLLMServer:
    """An OpenAI-compatible server on a loopback port. ``start()`` returns it, serving."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, **behaviour: Any) -> None:
        self.host = host
        self.port = port or free_port()
        self.behaviour = Behaviour(**behaviour)
        self.stats = Stats()
        self._script: list[int | str] = list(self.behaviour.script)
        self._random = random.Random(self.behaviour.seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._thread: threading.Thread | None = None
        self._down = False

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client (``.../v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    # -- control (from any thread) --------------------------------------------------

    def configure(self, **changes: Any) -> FakeLLMServer:
        """Change how the server answers from now on (``script`` replaces the pending one)."""
        known = {f.name for f in fields(Behaviour)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown FakeLLMServer setting(s): {', '.join(sorted(unknown))}")
        with self._lock:
            self.behaviour = replace(self.behaviour, **changes)
            if "script" in changes:
                self._script = list(self.behaviour.script)
            if "seed" in changes:
                self._random = random.Random(self.behaviour.seed)
        return self

    def reset(self, **behaviour: Any) -> FakeLLMServer:
        """Default behaviour (plus ``behaviour``), empty stats, and the server up."""
        with self._lock:
            self.behaviour = Behaviour(**behaviour)
            self._script = list(self.behaviour.script)
            self._random = random.Random(self.behaviour.seed)
            self.stats = Stats()
        self.set_down(False)
        return self

    def set_down(self, down: bool = True) -> None:
        """Take the provider down (its port refuses connections) or bring it back."""
        if self._loop is None:
            raise RuntimeError("FakeLLMServer is not started")
        self._down = down  # connections kept alive from before are dropped too
        coro = self._stop_listening() if down else self._listen()
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> FakeLLMServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._setup())
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-llm-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- serving ------------------------------------------------------------------------

    async def _setup(self) -> None:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_fake/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        if self._site is not None:
            return
        # a deep backlog: a burst of a thousand connects must not overflow into SYN retries
        self._site = web.TCPSite(
            self._runner, self.host, self.port, backlog=4096, reuse_address=True
        )
        await self._site.start()

    async def _stop_listening(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    def _outcome(self) -> int | str:
        """The fault (or 200) this request gets: the script first, then the random shares."""
        with self._lock:
            if self._script:
                return self._script.pop(0)
            b, draw = self.behaviour, self._random.random()
        for outcome, share in ((429, b.rate_429), (500, b.rate_500), (DROP, b.rate_drop)):
            if draw < share:
                return outcome
            draw -= share
        return 200

    def _record(self, request: web.Request, status: int | str, body: dict | None) -> None:
        self.stats.requests.append({
            "t": time.time(),
            "path": request.path,
            "status": status,
            "model": (body or {}).get("model"),
            "stream": bool((body or {}).get("stream")),
        })

    def _retry_after_headers(self) -> dict[str, str]:
        b = self.behaviour
        if b.retry_after_form == "ms":
            return {"retry-after-ms": f"{b.retry_after * 1000:g}"}
        if b.retry_after_form == "date":
            return {"Retry-After": email.utils.formatdate(time.time() + b.retry_after,
                                                          usegmt=True)}
        return {"Retry-After": f"{b.retry_after:g}"}

    async def _guard(self, request: web.Request) -> tuple[dict | None, web.StreamResponse | None]:
        """Authenticate, parse and apply faults; returns (body, early response or None);
        a streamed request's scripted fault (CUT, ...) is left in ``body["_fault"]``."""
        b = self.behaviour
        if self._down:
            _drop(request)
        if b.api_key is not None and request.headers.get("Authorization") != f"Bearer {b.api_key}":
            self._record(request, 401, None)
            return None, _error(401, "Incorrect API key provided.", "invalid_api_key")
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
        except ValueError as exc:
            self._record(request, 400, None)
            return None, _error(400, f"Could not parse the JSON body of your request: {exc}")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._record(request, 400, body)
            return None, _error(400, "you must provide a model parameter", param="model")
        if b.models is not None and model not in b.models:
            self._record(request, 404, body)
            return None, _error(404, f"The model `{model}` does not exist.", "model_not_found")
        outcome = self._outcome()
        if outcome == DROP:
            self._record(request, DROP, body)
            _drop(request)
        if outcome == QUOTA:
            self._record(request, 429, body)
            return None, _error(429, "You exceeded your current quota, please check your plan "
                                "and billing details.", "insufficient_quota")
        if outcome in _BODY_FAULTS:
            return {**body, "_fault": outcome}, None
        if outcome != 200:
            self._record(request, int(outcome), body)
            headers = self._retry_after_headers() if outcome == 429 else {}
            return None, _error(int(outcome), _FAULT_MESSAGES.get(int(outcome), "Injected fault."),
                                headers=headers)
        return body, None

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        self.stats.in_flight += 1
        self.stats.peak_in_flight = max(self.stats.peak_in_flight, self.stats.in_flight)
        try:
            yield
        finally:
            self.stats.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        with self._in_flight():
            body, early = await self._guard(request)
            if early is not None:
                return early
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                self._record(request, 400, body)
                return _error(400, "'messages' must be a non-empty array.", param="messages")
            b = self.behaviour
            await asyncio.sleep(b.latency)
            fault = body.pop("_fault", None)
            reply = _Reply.for_request(body, b.completion_tokens, b.tool_turns)
            reply.length_cut = fault == LENGTH
            reply.mistake(fault)
            self._record(request, fault or 200, body)
            if fault == BAD_BODY:
                return web.Response(text=json.dumps(reply.completion(body))[:40],
                                    content_type="application/json")
            if body.get("stream"):
                return await self._stream(request, body, reply, b.token_latency, fault,
                                          b.first_token_latency)
            await asyncio.sleep(b.token_latency * reply.completion_tokens)
            return web.json_response(reply.completion(body))

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        with self._in_flight():
            body, early = await self._guard(request)
            if early is not None:
                return early
            if not body.get("input"):
                self._record(request, 400, body)
                return _error(400, "'input' must be a string or a non-empty array.", param="input")
            b = self.behaviour
            await asyncio.sleep(b.latency)
            fault = body.pop("_fault", None)
            reply = _Reply.for_request(_as_chat_request(body), b.completion_tokens, b.tool_turns)
            reply.id = f"resp_{random.getrandbits(64):016x}"
            reply.mistake(fault)
            self._record(request, fault or 200, body)
            if not body.get("stream"):
                await asyncio.sleep(b.token_latency * reply.completion_tokens)
                return web.json_response(reply.response(body, "completed"))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            events = list(reply.response_events(body))
            if fault is not None and fault not in _TOOL_FAULTS:  # half the text, then its end
                deltas = [i for i, e in enumerate(events) if e["type"] == "response.output_text.delta"]
                events = events[:deltas[len(deltas) // 2]] if deltas else events[:2]
                seq = len(events)
                if fault == FAILED_EVENT:
                    failed = {**reply.response(body, "in_progress"), "status": "failed",
                              "error": {"code": "server_error",
                                        "message": "The model failed mid-way (injected fault)."}}
                    events.append({"type": "response.failed", "sequence_number": seq,
                                   "response": failed})
                elif fault == ERROR_EVENT:
                    events.append({"type": "error", "sequence_number": seq,
                                   "code": "server_error", "param": None,
                                   "message": "Something went wrong mid-stream (injected fault)."})
            for event in events:
                await response.write(
                    f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
                if event["type"] == "response.output_text.delta":
                    await asyncio.sleep(b.token_latency)
            await response.write_eof()
            return response

    async def _stream(
        self, request: web.Request, body: dict, reply: _Reply, token_latency: float,
        fault: str | None = None, first_token_latency: float = 0.0,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(first_token_latency)
        chunks = list(reply.chunks(body))
        if fault == CUT:  # half the tokens, then the body ends cleanly
            chunks = chunks[:max(1, len(reply.tokens) // 2)]
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
                await asyncio.sleep(token_latency)
        if fault == CUT:
            await response.write_eof()
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, early = await self._guard(request)
        if early is not None:
            return early
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            self._record(request, 400, body)
            return _error(400, "'input' must be a string or a non-empty array.", param="input")
        await asyncio.sleep(self.behaviour.latency)
        self._record(request, 200, body)
        tokens = sum(_count_tokens(str(text)) for text in inputs)
        return web.json_response({
            "object": "list",
            "model": body["model"],
            "data": [
                {"object": "embedding", "index": i, "embedding": _vector(str(text))}
                for i, text in enumerate(inputs)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })

    async def _models(self, request: web.Request) -> web.StreamResponse:
        names = self.behaviour.models or ("gpt-4o-mini",)
        return web.json_response(
            {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fake"} for n in names]}
        )

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        s = self.stats
        statuses: dict[str, int] = {}
        for r in s.requests:
            statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        out: dict[str, Any] = {
            "requests": len(s.requests), "statuses": statuses, "peak_in_flight": s.peak_in_flight,
        }
        if "last" in request.query:  # when the last N requests arrived (a benchmark's shape)
            arrived = [r["t"] for r in s.requests[-int(request.query["last"]):]]
            out["arrived"] = [min(arrived), max(arrived)] if arrived else None
        return web.json_response(out)


# -- answers ---------------------------------------------------------------------------


_FAULT_MESSAGES = {
    400: "Invalid request (injected fault).",
    401: "Incorrect API key provided (injected fault).",
    404: "Not found (injected fault).",
    429: "Rate limit reached; retry later.",
    500: "The server had an error while processing your request.",
    503: "The engine is currently overloaded.",
}


def _drop(request: web.Request) -> None:
    """Close the connection without a status line: the client sees a reset."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


def _error(
    status: int, message: str, code: str | None = None, param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    kind = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
            429: "rate_limit_exceeded"}.get(status, "server_error")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": param, "code": code}},
        status=status, headers=headers,
    )


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_tokens(messages: list) -> int:
    total = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else m
        if isinstance(content, list):  # content parts
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        total += 3 + _count_tokens(str(content or ""))
    return total


def _vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((byte - 127.5) / 127.5, 4) for byte in digest[:dims]]


def _example(schema: Any, hint: str) -> Any:
    """A value matching a JSON schema, well enough for a structured-output demo."""
    if not isinstance(schema, dict):
        return hint
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: _example(sub, hint) for name, sub in props.items()}
    if kind == "array":
        return [_example(schema.get("items", {}), hint)]
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    return hint


@dataclass
class _Reply:
    """The answer to one chat request: text (or a JSON document, or a tool call)."""

    model: str
    prompt_tokens: int
    tokens: list[str]
    tool_call: dict[str, Any] | None = None
    call_id: str = "call_0"
    #: The answer was cut at its length limit (finish_reason "length").
    length_cut: bool = False
    #: The tokens of choices 1, 2, ... of a request with ``n`` > 1 (other sentences).
    others: list[list[str]] = field(default_factory=list)
    id: str = field(default_factory=lambda: f"chatcmpl-{random.getrandbits(64):016x}")

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) if self.tool_call is None else 8

    def mistake(self, fault: str | None) -> None:
        """A tool call made wrong, as models now and then make them (BAD_ARGUMENTS,
        UNKNOWN_TOOL); any other fault, or an answer that calls no tool, is left as it is."""
        if self.tool_call is None:
            return
        if fault == BAD_ARGUMENTS:
            self.tool_call = {**self.tool_call, "arguments": self.tool_call["arguments"][:9]}
        elif fault == WRONG_ARGUMENTS:
            self.tool_call = {**self.tool_call, "arguments": '{"town": 3}'}
        elif fault == UNKNOWN_TOOL:
            self.tool_call = {**self.tool_call, "name": self.tool_call["name"] + "_v2"}

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def finish_reason(self) -> str:
        if self.length_cut:
            return "length"
        return "tool_calls" if self.tool_call else "stop"

    @classmethod
    def for_request(cls, body: dict, default_tokens: int, tool_turns: int | None = None) -> _Reply:
        messages = body["messages"]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        prompt = str(last.get("content") or "")
        wanted = body.get("max_completion_tokens") or body.get("max_tokens") or default_tokens
        wanted = max(1, min(int(wanted), 4096))
        reply = cls(body["model"], _prompt_tokens(messages), [])
        tools = body.get("tools") or []
        answered = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "tool")
        wants = answered < tool_turns if tool_turns is not None else last.get("role") != "tool"
        if tools and body.get("tool_choice") != "none" and wants:
            fn = tools[0].get("function", {})
            args = _example(fn.get("parameters", {}), prompt[:40])
            reply.tool_call = {"name": fn.get("name", "tool"), "arguments": json.dumps(args)}
            reply.call_id = f"call_{answered}"
            return reply
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema", {})
            reply.tokens = _split(json.dumps(_example(schema, "draft")))
        elif fmt.get("type") == "json_object":
            reply.tokens = _split(json.dumps({"answer": _sentence(prompt, wanted)}))
        else:
            reply.tokens = _split(_sentence(prompt, wanted))
            n = body.get("n") or 1
            reply.others = [_split(_sentence(f"{prompt} #{k}", wanted)) for k in range(1, n)]
        return reply

    def message(self) -> dict[str, Any]:
        if self.tool_call:
            return {"role": "assistant", "content": None, "tool_calls": [
                {"id": self.call_id, "type": "function", "function": self.tool_call}]}
        return {"role": "assistant", "content": self.text}

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def completion(self, body: dict) -> dict[str, Any]:
        return {
            "id": self.id, "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": self.message(), "finish_reason": self.finish_reason,
                         "logprobs": None}] + [
                {"index": k, "message": {"role": "assistant", "content": "".join(tokens)},
                 "finish_reason": self.finish_reason, "logprobs": None}
                for k, tokens in enumerate(self.others, 1)],
            "usage": self.usage(),
        }

    def response(self, body: dict, status: str) -> dict[str, Any]:
        """The Responses API's answer (``status`` in_progress: the stream's first view)."""
        done = status == "completed"
        return {
            "id": self.id, "object": "response", "created_at": int(time.time()), "model": self.model,
            "status": status, "output": _response_output(self) if done else [],
            "parallel_tool_calls": True, "tool_choice": body.get("tool_choice") or "auto",
            "tools": body.get("tools") or [], "instructions": body.get("instructions"),
            "error": None, "incomplete_details": None, "metadata": {}, "text": body.get("text"),
            "usage": {
                "input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            } if done else None,
        }

    def response_events(self, body: dict) -> Iterator[dict[str, Any]]:
        """The Responses API's SSE events, in the order OpenAI sends them."""
        seq = iter(range(1_000_000))
        yield {"type": "response.created", "sequence_number": next(seq),
               "response": self.response(body, "in_progress")}
        [item] = _response_output(self)
        where = {"output_index": 0, "item_id": item["id"]}
        yield {"type": "response.output_item.added", "sequence_number": next(seq),
               "output_index": 0, "item": {**item, "status": "in_progress"}}
        if not self.tool_call:
            for token in self.tokens:
                yield {"type": "response.output_text.delta", "sequence_number": next(seq),
                       "content_index": 0, "delta": token, "logprobs": [], **where}
            yield {"type": "response.output_text.done", "sequence_number": next(seq),
                   "content_index": 0, "text": self.text, "logprobs": [], **where}
        yield {"type": "response.output_item.done", "sequence_number": next(seq),
               "output_index": 0, "item": item}
        yield {"type": "response.completed", "sequence_number": next(seq),
               "response": self.response(body, "completed")}

    def chunks(self, body: dict) -> Iterator[dict[str, Any]]:
        base = {"id": self.id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model}

        def chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict[str, Any]:
            return {**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                                         "logprobs": None}]}

        if self.tool_call:
            yield chunk({"role": "assistant", "tool_calls": [
                {"index": 0, "id": self.call_id, "type": "function", "function": self.tool_call}]})
        else:  # with n > 1, the choices' tokens interleaved, as OpenAI sends them
            choices = [self.tokens, *self.others]
            for i in range(max(len(tokens) for tokens in choices)):
                for index, tokens in enumerate(choices):
                    if i < len(tokens):
                        yield chunk({"role": "assistant", "content": tokens[i]} if i == 0
                                    else {"content": tokens[i]}, index=index)
        for index in range(1 + len(self.others)):
            yield chunk({}, self.finish_reason, index)
        if (body.get("stream_options") or {}).get("include_usage"):
            yield {**base, "choices": [], "usage": self.usage()}


def _as_chat_request(body: dict) -> dict:
    """A Responses API request as the Chat Completions request it amounts to."""
    items = body["input"]
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    for item in [{"role": "user", "content": items}] if isinstance(items, str) else items:
        kind = item.get("type")
        if kind == "function_call_output":
            messages.append({"role": "tool", "content": item.get("output")})
        elif kind == "function_call":
            messages.append({"role": "assistant", "content": None})
        else:
            messages.append({"role": item.get("role", "user"), "content": item.get("content")})
    fmt = (body.get("text") or {}).get("format") or {}
    return {
        "model": body["model"], "messages": messages,
        "max_tokens": body.get("max_output_tokens"), "tool_choice": body.get("tool_choice"),
        "tools": [{"type": "function", "function": t} for t in body.get("tools") or ()
                  if t.get("type") == "function"],
        "response_format": ({"type": "json_schema", "json_schema": {"schema": fmt.get("schema")}}
                            if fmt.get("type") == "json_schema" else fmt or None),
    }


def _response_output(reply: _Reply) -> list[dict[str, Any]]:
    if reply.tool_call:
        return [{"type": "function_call", "id": f"fc_{reply.call_id}", "call_id": reply.call_id,
                 "status": "completed",
                 **reply.tool_call}]
    return [{"type": "message", "id": "msg_0", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": reply.text, "annotations": []}]}]


def _split(text: str) -> list[str]:
    """Tokens as a streaming API sends them: words with their leading space."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _sentence(prompt: str, tokens: int) -> str:
    start = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(_WORDS)
    words = [_WORDS[(start + i) % len(_WORDS)] for i in range(tokens)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A local OpenAI-compatible server for demos and tests.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--token-latency", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--completion-tokens", type=int, default=16)
    parser.add_argument("--rate-429", type=float, default=0.0, help="share of 429 answers")
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--rate-500", type=float, default=0.0, help="share of 500 answers")
    parser.add_argument("--rate-drop", type=float, default=0.0, help="share of dropped connections")
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    server = FakeLLMServer(
        args.host, args.port, latency=args.latency, token_latency=args.token_latency,
        completion_tokens=args.completion_tokens, rate_429=args.rate_429,
        retry_after=args.retry_after, rate_500=args.rate_500, rate_drop=args.rate_drop,
        api_key=args.api_key, seed=args.seed,
    ).start()
    print(f"fake LLM server listening on {server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
