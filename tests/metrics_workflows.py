"""Workflows of the metrics tests, on queues of their own.

The metrics tests count steps exactly, so their steps must run on the worker the test
scrapes and on no other: every workflow here routes to ``metrics-tests`` (consumed only
by the tests' own worker processes, ``celery -A tests.app worker --include
tests.metrics_workflows``; ``metrics-prefork``, by the prefork worker's) or to
``metrics-nobody`` (consumed by none: its runs stay queued); ``metrics-doomed`` is served
by a worker the test kills.
"""

from __future__ import annotations

import os

from marshmallow import fields

import flowkit
from flowkit import component
from flowkit.llm import OpenAI, RetryPolicy
from flowkit.store import get_store

QUEUE = "metrics-tests"
PREFORK = "metrics-prefork"
DOOMED = "metrics-doomed"
UNSERVED = "metrics-nobody"
MODEL = "gpt-4o-mini"


def _calls(name: str) -> int:
    ctx = flowkit.context()
    return get_store().redis.incr(f"mcount:{ctx.run_id}:{name}")


@component(name="m.inc")
def inc(data: dict) -> dict:
    return {**data, "n": data.get("n", 0) + 1}


@component(name="m.twice")
def twice(data: dict) -> dict:
    return {**data, "n": data.get("n", 0) * 2}


@component(name="m.flaky")
def flaky(data: dict) -> dict:
    """Fails its first ``fail_times`` attempts in a run."""
    if _calls("flaky") <= data.get("fail_times", 2):
        raise RuntimeError("flaky")
    return data


@component(name="m.broken")
def broken(data: dict) -> dict:
    raise ValueError("always broken")


@component(name="m.unkept")
def unkept(data: dict) -> dict:
    """Returns what JSON cannot carry: the attempt ends, the step fails."""
    return {"tags": {"a", "b"}}


@component(name="m.ask")
def ask(data: dict) -> dict:
    client = OpenAI(api_key="sk-metrics-test", base_url=os.environ["METRICS_LLM_URL"],
                    name="fake", retry=RetryPolicy(attempts=1))
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": data.get("prompt", "hi")}],
        max_tokens=6)
    return {"text": reply.choices[0].message.content}


@component(name="m.hold")
def hold(data: dict) -> dict:
    """Says it runs (``mheld:<run>``), then holds until ``mgate:<run>`` opens."""
    ctx = flowkit.context()
    r = get_store().redis
    r.rpush(f"mheld:{ctx.run_id}", ctx.attempt)
    r.blpop(f"mgate:{ctx.run_id}", timeout=60)
    return data


@component(name="m.approve")
def approve(data: dict) -> dict:
    answer = flowkit.wait_for_input("ok", schema={"ok": fields.Boolean(required=True)})
    return {**data, "ok": answer["ok"]}


steps = flowkit.Workflow("metrics_steps", [inc, twice], queue=QUEUE)
retried = flowkit.Workflow(
    "metrics_retried",
    [flaky.retry(attempts=3, backoff=flowkit.exponential(0.01, 0.02), jitter=False)],
    queue=QUEUE)
failing = flowkit.Workflow("metrics_failing", [broken], queue=QUEUE)
unkeepable = flowkit.Workflow("metrics_unkeepable", [unkept], queue=QUEUE)
asking = flowkit.Workflow("metrics_asking", [ask], queue=QUEUE)
approval = flowkit.Workflow("metrics_approval", [approve], queue=QUEUE)
on_prefork = flowkit.Workflow("metrics_on_prefork", [inc, twice], queue=PREFORK)
held = flowkit.Workflow("metrics_held", [hold], queue=DOOMED)
unserved = flowkit.Workflow("metrics_unserved", [inc], queue=UNSERVED)
