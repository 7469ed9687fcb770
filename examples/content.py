"""Content generation: research -> outline -> sections in parallel -> assemble.

Each section streams its text into the run's event stream as it is written.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

import flowkit
from flowkit import component, fan_out

from .textgen import generate


def write(prompt: str, words: int) -> str:
    """Stream generated text to the run's stream and return all of it."""
    parts = []
    for token in generate(prompt, words):
        flowkit.emit(token)
        parts.append(token)
    return "".join(parts).strip()


@component(name="content.research")
def research(brief: dict) -> dict:
    flowkit.progress(f"researching {brief['topic']}", fraction=0.0)
    notes = write(f"research notes on {brief['topic']} for {brief['audience']}", 30)
    flowkit.progress("research done", fraction=1.0)
    return {**brief, "notes": notes}


@component(name="content.outline")
def outline(research: dict) -> list:
    titles = [f"{research['topic']}: part {i + 1}" for i in range(research["sections"])]
    return [{"title": t, "notes": research["notes"], "audience": research["audience"]} for t in titles]


@component(name="content.write_section")
def write_section(section: dict) -> dict:
    flowkit.progress(f"writing '{section['title']}'")
    text = write(f"{section['title']} for {section['audience']}: {section['notes']}", 60)
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
        research.retry(attempts=3, backoff=flowkit.exponential(1, 10)),
        outline,
        fan_out(write_section.retry(attempts=3, backoff=flowkit.exponential(1, 10))),
        assemble,
    ],
    input_schema=ContentInput,
    description="Research a topic, outline it, write the sections in parallel, assemble.",
)
