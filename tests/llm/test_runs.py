"""The LLM client inside runs on real worker processes: streaming, traces, secrets, failover, budgets."""

from __future__ import annotations

import json

import pytest

import flowkit
from flowkit import events
from flowkit.engine import trace
from flowkit.errors import StepError
from tests.conftest import open_gate, reached_gate, wait_until
from tests.llm import workflows as wf


def outputs(run: flowkit.Run) -> list[events.Event]:
    return [e for e in run.events() if e.type == events.STEP_OUTPUT]


def llm_spans(run: flowkit.Run) -> list[dict]:
    return [s for s in trace.read(run.id) if s["kind"] == "llm"]


def test_streamed_tokens_reach_the_run_stream_in_order_and_the_component_gets_the_text(llm):
    primary, _ = llm
    primary.configure(token_latency=0.01)

    run = wf.streaming.start({"prompt": "tell me a story", "max_tokens": 30})
    result = run.result(timeout=30)

    chunks = outputs(run)
    streamed = "".join(e.data["chunk"] for e in chunks)
    assert streamed == result["text"]
    assert len(result["text"].split()) == 30
    assert result["chunk_types"] == ["ChatCompletionChunk"], "the component iterates the SDK's stream"
    assert 2 < len(chunks) < 30, "tokens are batched, yet arrive as several chunks"
    assert [e.id for e in chunks] == sorted(e.id for e in chunks)
    assert all(e.data["step"] == "0:llmtest.stream" for e in chunks)


@pytest.mark.parametrize("workflow", ["streaming", "async_streaming"])
def test_text_read_before_the_model_pauses_is_sent_within_the_flush_interval(llm, workflow):
    """Its batch waited for the next token to be flushed: through a pause of the model's,
    text already read reached the run's stream only when the model went on (2 s late here)."""
    primary, _ = llm
    primary.configure(token_latency=2.0)  # a word, a 2 s pause, a word, a 2 s pause, the end
    run = getattr(wf, workflow).start({"prompt": "tell me a story", "max_tokens": 2})
    text = run.result(timeout=30)["text"]
    [asked] = primary.stats.requests
    chunks = outputs(run)
    # FLOWKIT_LLM_STREAM_FLUSH_SECONDS is 0.1: sent about then, not at the next word (2 s)
    assert chunks[0].data["ts"] - asked["t"] < 1.0, chunks[0].data["ts"] - asked["t"]
    assert [c.data["chunk"] for c in chunks] == [text.split(" ")[0], " " + text.split(" ")[1]]


def test_a_stream_left_unclosed_is_recorded_when_its_attempt_ends(llm):
    """A loop left with break, the stream not closed: no span for the call, and the text it
    had read never reached the run's stream."""
    run = wf.stream_broken.start({"prompt": "tell me a story", "max_tokens": 30})
    first = run.result(timeout=30)["first"]
    assert first and "".join(e.data["chunk"] for e in outputs(run)) == first
    [span] = llm_spans(run)
    assert span["status"] == "ok" and span["stream"] is True and span["provider"] == "primary"


def test_a_stream_left_open_by_an_attempt_that_failed_is_an_error_span(llm):
    """Its span said ``ok``, with the half-read answer as the call's output."""
    run = wf.stream_failed.start({"prompt": "tell me a story", "max_tokens": 30})
    with pytest.raises(StepError, match="no use for"):
        run.result(timeout=30)
    [span] = llm_spans(run)
    assert span["status"] == "error" and span["stream"] is True
    assert span["error"].startswith("StepError: the step's attempt failed (ValueError: no use "
                                    "for "), span["error"]
    assert span["error"].endswith("while this stream was read: the stream was dropped")


def test_the_trace_records_each_call_with_tokens_and_latency(llm):
    primary, _ = llm
    primary.configure(latency=0.1, token_latency=0.01)

    run = wf.traced.start({"prompt": "summarise the quarter"})
    out = run.result(timeout=30)
    spans = trace.read(run.id)

    workflow, step = spans[0], spans[1]
    assert workflow["kind"] == "workflow" and workflow["name"] == "llmtest_both"
    assert workflow["status"] == "ok" and workflow["duration"] > 0
    assert step["kind"] == "step" and step["name"] == "llmtest.both" and step["parent"] == "run"
    assert step["input"] == {"prompt": "summarise the quarter", "client": "plain", "max_tokens": 8}
    assert step["output"] == out and step["status"] == "ok" and step["attempt"] == 1
    assert step["worker"].startswith(("llm-a@", "llm-b@")) and step["duration"] > 0.2

    plain, streamed, embedded = llm_spans(run)
    served = [r for r in primary.stats.requests if r["status"] == 200]
    assert len(served) == 3
    for span in (plain, streamed, embedded):
        assert span["parent"] == step["id"] and span["provider"] == "primary"
        assert span["latency"] >= 0.1 and span["status"] == "ok"
        assert span["start"] >= step["start"] and span["end"] <= step["end"]
    assert plain["operation"] == "chat.completions" and plain["model"] == "gpt-4o-mini"
    assert plain["completion_tokens"] == 5 and plain["prompt_tokens"] == 6
    assert plain["finish_reason"] == "stop" and plain["output"] == out["first"]
    assert plain["request"]["max_tokens"] == 5
    assert plain["messages"] == [{"role": "user", "content": "summarise the quarter"}]
    assert plain["cost"] == (6 * 0.15 + 5 * 0.6) / 1e6
    assert streamed["stream"] is True and streamed["completion_tokens"] == 12
    assert 0.1 <= streamed["ttft"] < streamed["latency"]
    assert streamed["output"] == out["second"]
    assert embedded["operation"] == "embeddings" and embedded["prompt_tokens"] == 3

    [completed] = [e for e in run.events() if e.type == "step.completed"]
    prompt = sum(s["prompt_tokens"] for s in (plain, streamed, embedded))
    assert completed.data["tokens"] == {"prompt": prompt, "completion": 5 + 12, "total": prompt + 17}


def test_a_step_counts_no_tokens_for_an_answer_from_the_cache(llm):
    run = wf.asked_twice.start({"prompt": "the same question twice"})
    out = run.result(timeout=30)
    assert out["texts"][0] == out["texts"][1]
    first, second = llm_spans(run)
    assert second["cached"] is True and not first.get("cached")
    assert first["cost"] > 0 and second["cost"] == 0  # it carried the first call's cost
    [completed] = [e for e in run.events() if e.type == "step.completed"]
    assert completed.data["tokens"] == {"prompt": first["prompt_tokens"], "completion": 5,
                                        "total": first["prompt_tokens"] + 5}


def test_a_running_step_and_its_finished_calls_are_in_the_trace_before_the_step_ends(llm):
    # trace records are written in batches: a running step's records wait at most
    # FLOWKIT_TRACE_FLUSH_SECONDS, never until its end
    run = wf.waiting.start({"prompt": "still thinking"})
    reached_gate(run, "ask_then_wait")

    def step_and_call() -> list[dict] | None:
        spans = trace.read(run.id)
        return spans if {s["kind"] for s in spans} >= {"step", "llm"} else None

    spans = wait_until(step_and_call, timeout=5, message="the running step's spans")
    step = next(s for s in spans if s["kind"] == "step")
    (call,) = [s for s in spans if s["kind"] == "llm"]
    assert step["status"] == "running" and step.get("end") is None
    assert call["status"] == "ok" and call["parent"] == step["id"] and call["start"] >= step["start"]

    open_gate(run, "ask_then_wait")
    run.result(timeout=30)
    step = next(s for s in trace.read(run.id) if s["kind"] == "step")
    assert step["status"] == "ok" and step["start"] <= call["start"] <= call["end"] <= step["end"]


def test_secrets_never_appear_in_a_trace_or_an_event(llm):
    primary, _ = llm
    primary.configure(api_key=wf.PROVIDER_KEY, script=(500,))  # one retried failure too
    token = "cust-token-7f3a9c1e55"

    run = wf.secret.start({"customer_token": token, "topic": "renewal"})
    run.result(timeout=30)

    spans = trace.read(run.id)
    everything = json.dumps(spans) + json.dumps([e.to_dict() for e in run.events()])
    assert token not in everything
    assert wf.PROVIDER_KEY not in everything
    step = next(s for s in spans if s["kind"] == "step")
    assert step["input"] == {"customer_token": "[redacted]", "topic": "renewal"}
    (call,) = llm_spans(run)
    assert call["messages"][0]["content"] == "Write to customer [redacted] about renewal"
    assert call["retries"] == 1
    # the secret did reach the provider: redaction is in the trace, not in the call
    assert primary.stats.requests[-1]["status"] == 200


def test_a_run_fails_over_when_the_first_provider_is_down_and_the_trace_says_who_served(llm):
    primary, backup = llm
    primary.set_down(True)

    run = wf.asking.start({"prompt": "hello", "client": "failover"})
    out = run.result(timeout=30)

    assert out["model"] == "backup-model"
    (call,) = llm_spans(run)
    assert call["provider"] == "backup" and call["model"] == "backup-model"
    assert call["requested_model"] == "gpt-4o-mini"
    assert call["failovers"][0]["provider"] == "primary"
    assert "APIConnectionError" in call["failovers"][0]["error"]
    assert [r["model"] for r in backup.stats.requests] == ["backup-model"]


def test_a_rate_limit_shared_by_two_workers_keeps_the_observed_rate_within_budget(llm):
    primary, _ = llm
    primary.configure(latency=0.02)
    calls = 30
    rate, burst = wf.LIMIT.rpm / 60, wf.LIMIT.burst

    # one run per call (not a fan-out: see the report on chord joins across workers)
    runs = [wf.asking.start({"prompt": f"question {i}", "client": "limited"}) for i in range(calls)]
    for run in runs:
        run.result(timeout=60)

    times = sorted(r["t"] for r in primary.stats.requests)
    assert len(times) == calls and all(r["status"] == 200 for r in primary.stats.requests)
    # in any window, at most the burst plus what the budget refilled (+1 for timing jitter);
    # calls are timed as they reach the server, and one held up after its token (a loaded
    # machine: 0.3 s) arrives bunched with the next ones
    late = 0.3
    for i in range(calls):
        for j in range(i + 1, calls):
            allowed = burst + rate * (times[j] - times[i] + late) + 1
            assert j - i + 1 <= allowed, (i, j, times[j] - times[i])
    assert times[-1] - times[0] >= (calls - burst) / rate * 0.9
    workers = {s["worker"].split("@")[0] for run in runs for s in trace.read(run.id) if s["kind"] == "step"}
    assert workers == {"llm-a", "llm-b"}, "both worker processes made calls"
    waited = [e for run in runs for e in run.events() if e.type == events.STEP_PROGRESS]
    assert any(e.data["message"] == flowkit.llm.WAITING_MESSAGE for e in waited)


def test_a_stored_trace_exports_to_opentelemetry(llm):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    run = wf.traced.start({"prompt": "export me"})
    run.result(timeout=30)
    exporter = InMemorySpanExporter()

    assert trace.export_run(run.id, exporter) == 5
    finished = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in finished}) == 1
    (root,) = [s for s in finished if s.name == "workflow llmtest_both"]
    (step,) = [s for s in finished if s.name == "step 0:llmtest.both"]
    assert root.parent is None and step.parent.span_id == root.context.span_id
    chats = [s for s in finished if s.name == "chat gpt-4o-mini"]
    assert all(c.parent.span_id == step.context.span_id for c in chats)
    assert sorted(c.attributes["gen_ai.usage.output_tokens"] for c in chats) == [5, 12]
    assert all(c.end_time > c.start_time for c in chats)


def test_an_async_stream_left_unclosed_is_closed_when_its_attempt_ends(llm):
    """A loop left with break over an async stream the step still holds: the provider went
    on generating (and billing) it to its end, as nothing closed its connection."""
    primary, _ = llm
    primary.configure(token_latency=0.05)  # 200 tokens: 10 s to the stream's own end
    run = wf.async_stream_broken.start({"prompt": "tell me a story", "max_tokens": 200})
    assert run.result(timeout=30)["first"]
    wait_until(lambda: primary.stats.in_flight == 0, 5, "the provider's stream closed")
    [span] = llm_spans(run)
    assert span["status"] == "ok" and span["stream"] is True


def test_cancelling_a_run_closes_its_async_stream(llm):
    """The run's text refused once it was cancelled: the stream was left open, the provider
    generating to its end, and its span said ok."""
    primary, _ = llm
    primary.configure(token_latency=0.02)  # 500 tokens: 10 s to the stream's own end
    run = wf.async_streaming.start({"prompt": "tell me a long story", "max_tokens": 500})
    wait_until(lambda: outputs(run), 20, "the first streamed text")
    flowkit.cancel(run.id)
    wait_until(lambda: primary.stats.in_flight == 0, 5, "the provider's stream closed")
    wait_until(lambda: llm_spans(run), 10, "the call's span")
    assert llm_spans(run)[0]["status"] == "error"


def test_a_call_gathered_with_a_failing_sibling_is_cancelled_with_its_attempt(llm):
    """asyncio.gather left the completion running when the check beside it failed: the
    provider generated, and billed, a whole answer for an attempt that was over."""
    primary, _ = llm
    primary.configure(token_latency=0.02)  # 500 tokens: 10 s to the answer
    run = wf.async_gathered.start({"prompt": "tell me a long story", "max_tokens": 500})
    with pytest.raises(StepError, match="the check failed"):
        run.result(timeout=30)
    assert [r["path"] for r in primary.stats.requests] == ["/v1/chat/completions"]
    wait_until(lambda: primary.stats.in_flight == 0, 5, "the provider's request closed")


def test_a_sync_call_waiting_out_a_retry_after_is_not_sent_again_once_its_run_is_cancelled(llm):
    """Python cannot stop the step's thread: it slept out the Retry-After, then sent a whole
    completion for a cancelled run."""
    import time

    primary, _ = llm
    primary.configure(script=(429,), retry_after=2)
    run = wf.asking.start({"prompt": "hello", "max_tokens": 4})
    wait_until(lambda: primary.stats.requests, 20, "the first request, answered 429")
    flowkit.cancel(run.id)
    time.sleep(3.5)  # what is under test: nothing is sent once the Retry-After has passed
    assert [r["status"] for r in primary.stats.requests] == [429]
    # the call that was sent, and answered 429, is in the trace (it left no span)
    [span] = wait_until(lambda: llm_spans(run), 20, "the call's span")
    assert span["status"] == "error" and span["error"].startswith(
        "RunCancelled: The run was cancelled while this LLM call waited to retry"), span
