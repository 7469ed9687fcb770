"""A workflow whose LLM calls the OpenTelemetry tests export live, on a queue of its own
(``llm-otel``): only the exporting worker of tests.llm.otel_app serves it."""

from __future__ import annotations

import flowkit
from flowkit import component
from tests.llm import workflows as wf

QUEUE = "llm-otel"


@component(name="llmtest.otel")
def chat_twice_and_embed(data: dict) -> dict:
    """A chat call with sampling parameters, a streamed one and an embedding."""
    messages = [{"role": "user", "content": data["prompt"]}]
    plain = wf.client("plain").chat.completions.create(
        model=wf.MODEL, messages=messages, max_tokens=6, temperature=0.3)
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in wf.client("plain").chat.completions.create(
            model=wf.MODEL, messages=messages, max_tokens=12, stream=True)
        if c.choices)
    wf.client("plain").embeddings.create(model="text-embedding-3-small", input=[data["prompt"]])
    return {"plain": plain.choices[0].message.content, "streamed": streamed}


@component(name="llmtest.otel_failover")
def ask_with_failover(data: dict) -> str:
    reply = wf.client("failover").chat.completions.create(
        model=wf.MODEL, messages=[{"role": "user", "content": data["prompt"]}], max_tokens=4)
    return reply.choices[0].message.content


exported = flowkit.Workflow("llmtest_otel", [chat_twice_and_embed], queue=QUEUE)
failing_over = flowkit.Workflow("llmtest_otel_failover", [ask_with_failover], queue=QUEUE)
