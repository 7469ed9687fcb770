"""LLM steps on the I/O pool the Procfile recommends: a real gevent worker."""

from __future__ import annotations

import pytest

import flowkit
from flowkit.engine.paths import item_key
from flowkit.testing import WorkerProcess
from tests.conftest import ROOT
from tests.llm import workflows as wf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gevent_worker(llm_env):
    with WorkerProcess("tests.llm.app", name="llm-gevent", queues=(wf.GEVENT_QUEUE,), pool="gevent",
                       concurrency=20, env=llm_env, cwd=ROOT) as proc:
        yield proc


def test_a_batched_fan_out_of_llm_calls_runs_its_items_at_once_on_gevent(llm, gevent_worker):
    primary, _ = llm
    primary.configure(latency=0.5)
    run = wf.fanned_on_gevent.start({"n": 20})  # two batches of ten
    answers = run.result(timeout=30)

    assert len(answers) == 20 and all(isinstance(a, str) and a for a in answers)
    # a batch's items wait for the server together: greenlets, not one call after another
    assert primary.stats.peak_in_flight >= 10
    completed = {e.data["step"]: e.data for e in run.events() if e.type == "step.completed"}
    items = [item_key("1", i, "llmtest.answer") for i in range(20)]
    assert set(items) <= set(completed)
    assert all(completed[k]["tokens"]["completion"] == 3 for k in items)
    assert len([r for r in primary.stats.requests if r["status"] == 200]) == 20


def test_an_async_step_streams_a_response_on_gevent(llm, gevent_worker):
    """AsyncOpenAI from an async component on the gevent pool: the process's one event
    loop runs in a greenlet; the deltas still reach the run's stream."""
    runs = [wf.async_surfaced_on_gevent.start({"prompt": f"topic {i}", "max_tokens": 10})
            for i in range(3)]
    for run in runs:
        out = run.result(timeout=60)
        assert out["parsed"] == {"title": "draft", "score": 1}
        chunks = [e.data["chunk"] for e in run.events() if e.type == "step.output"]
        assert "".join(chunks) == out["text"] and len(out["text"].split()) == 10


def test_a_failed_item_of_a_batch_on_gevent_fails_the_run_with_the_providers_error(llm, gevent_worker):
    """The items of a batch run in greenlets of their own; one that fails (a 404 from the
    provider, through aiohttp on the worker's loop) fails the run with its step and error."""
    primary, _ = llm
    primary.configure(models=(wf.MODEL,))
    run = wf.failing_on_gevent.start({"n": 5})  # one batch

    with pytest.raises(flowkit.StepError, match="does not exist") as err:
        run.result(timeout=30)

    assert err.value.step == item_key("1", 3, "llmtest.answer_or_fail")
    failed = [e.data for e in run.events() if e.type == "step.failed"]
    assert [f["step"] for f in failed] == [item_key("1", 3, "llmtest.answer_or_fail")]
    assert "NotFoundError" in str(failed[0]["error"])
