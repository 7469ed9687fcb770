"""Content generation: research -> outline -> sections in parallel -> assemble.

The text comes from an LLM through ``flowkit.llm`` (OpenAI when OPENAI_API_KEY is
set, else the local OpenAI-compatible server the demo starts); each call streams
its tokens into the run's event stream as they arrive.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

import flowkit
import flowkit.llm
from flowkit import component, fan_out

_client: flowkit.llm.OpenAI | None = None


def llm() -> flowkit.llm.OpenAI:
    """One client per process, built on first use so it reads the worker's environment."""
    global _client
    if _client is None:
        _client = flowkit.llm.client_from_env()
    return _client


def write(instructions: str, prompt: str, max_tokens: int) -> str:
    """Ask the LLM, streaming its answer to the run's stream; returns the whole text."""
    stream = llm().chat.completions.create(
        model=flowkit.llm.default_model(),
        messages=[{"role": "system", "content": instructions}, {"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()


@component(name="content.research")
def research(brief: dict) -> dict:
    flowkit.progress(f"researching {brief['topic']}", fraction=0.0)
    notes = write("You are a careful researcher. Answer with terse notes.",
                  f"Research notes on {brief['topic']} for {brief['audience']}.", 60)
    flowkit.progress("research done", fraction=1.0)
    return {**brief, "notes": notes}


@component(name="content.outline")
def outline(research: dict) -> list:
    titles = [f"{research['topic']}: part {i + 1}" for i in range(research["sections"])]
    return [{"title": t, "notes": research["notes"], "audience": research["audience"]} for t in titles]


@component(name="content.write_section")
def write_section(section: dict) -> dict:
    flowkit.progress(f"writing '{section['title']}'")
    text = write(
        f"You write one section of an article for {section['audience']}.",
        f"Write the section '{section['title']}' from these notes: {section['notes']}",
        120,
    )
    return {"title": section["title"], "text": text}


@component(name="content.assemble")
def assemble(sections: list) -> dict:
    body = "\n\n".join(f"## {s['title']}\n\n{s['text']}" for s in sections)
    return {"article": body, "sections": len(sections), "words": len(body.split())}


class ContentInput(Schema):
    topic = fields.String(required=True, validate=validate.Length(min=1, max=200))
    audience = fields.String(load_default="engineers", validate=validate.Length(max=200))
    sections = fields.Integer(load_default=3, validate=validate.Range(min=1, max=12))


content = flowkit.Workflow(
    "content",
    [
        research.retry(attempts=3, backoff=flowkit.exponential(1, 10)).queue("llm"),
        outline,
        fan_out(write_section.retry(attempts=3, backoff=flowkit.exponential(1, 10)).queue("llm")),
        assemble,
    ],
    input_schema=ContentInput,
    description="Research a topic, outline it, write the sections in parallel, assemble.",
)
