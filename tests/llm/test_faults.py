"""A misbehaving provider: what the client raises, what a step's retry sends again, and what
the trace records (streams cut off or failed, errors that cannot succeed, Retry-After forms)."""

from __future__ import annotations

import asyncio

import openai
import pytest
import tenacity

import flowkit
from flowkit import events
from flowkit.engine import trace
from flowkit.errors import StepError
from flowkit.llm import AsyncOpenAI, OpenAI, Provider, RetryPolicy
from flowkit.policy import Backoff, Policy
from flowkit.testing.fake_openai import BAD_BODY, CUT, ERROR_EVENT, FAILED_EVENT, LENGTH, QUOTA
from tests.llm import workflows as wf

MESSAGES = [{"role": "user", "content": "hello"}]
QUICK = RetryPolicy(attempts=4, initial=0.01, maximum=0.02)


def llm_spans(run: flowkit.Run) -> list[dict]:
    return [s for s in trace.read(run.id) if s["kind"] == "llm"]


def of_type(run: flowkit.Run, kind: str) -> list[events.Event]:
    return [e for e in run.events() if e.type == kind]


def statuses(server) -> list:
    return [r["status"] for r in server.stats.requests]


# -- Retry-After as the SDK reads it ------------------------------------------------------


@pytest.mark.parametrize(("form", "least"), [("ms", 1.4), ("date", 0.9)])
def test_a_retry_after_in_milliseconds_or_as_an_http_date_is_waited_out(servers, form, least):
    """Only ``Retry-After: <seconds>`` was read: the others got a 10 ms backoff."""
    primary, _ = servers
    # an HTTP date has whole seconds: 2 s ahead is 1 to 2 s from now
    primary.configure(script=(429,), retry_after=1.5 if form == "ms" else 2,
                      retry_after_form=form)
    client = OpenAI(api_key="sk-test-retry-after", base_url=primary.base_url, retry=QUICK)

    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices
    assert statuses(primary) == [429, 200]
    first, second = (r["t"] for r in primary.stats.requests)
    assert second - first >= least


def test_a_step_waits_out_a_retry_after_at_most_the_llm_cap_or_its_backoff_maximum(servers):
    """A Retry-After: 3600 held the step's worker an hour."""
    primary, _ = servers
    primary.configure(script=(429,), retry_after=3600)
    client = OpenAI(api_key="sk-test-cap", base_url=primary.base_url, retry=QUICK)
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    state = tenacity.RetryCallState(None, None, (), {})
    state.set_exception((type(raised.value), raised.value, None))
    cap = flowkit.config.get_settings().llm_max_retry_after
    assert Policy(backoff=Backoff(0.1, 0.2)).wait()(state) == cap
    assert Policy(backoff=Backoff(1, cap + 30)).wait()(state) == cap + 30


def test_insufficient_quota_is_not_retried_but_fails_over(servers):
    """A 429 insufficient_quota was retried as a rate limit: it cannot succeed until someone
    pays. Another provider is another account."""
    primary, backup = servers
    primary.configure(script=(QUOTA,))
    backup.configure(script=(QUOTA,))
    client = OpenAI(providers=[Provider("primary", base_url=primary.base_url, api_key="sk-a-key"),
                               Provider("backup", base_url=backup.base_url, api_key="sk-b-key")],
                    retry=QUICK)

    with pytest.raises(openai.RateLimitError, match="quota") as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert statuses(primary) == [429] and statuses(backup) == [429]
    assert raised.value.flowkit_final


# -- streams cut off or failed ---------------------------------------------------------------


def test_a_chat_stream_cut_off_raises_a_connection_error(servers):
    """It ended quietly, and its caller kept half an answer as the whole."""
    primary, _ = servers
    primary.configure(script=(CUT,))
    client = OpenAI(api_key="sk-test-cut", base_url=primary.base_url, retry=QUICK)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                            max_tokens=8, stream=True)
    read = []
    with pytest.raises(openai.APIConnectionError, match="cut off"):
        read.extend(stream)
    assert read, "the chunks before the cut reached the caller"


def test_an_async_chat_stream_cut_off_raises_a_connection_error(servers):
    primary, _ = servers
    primary.configure(script=(CUT,))

    async def main() -> None:
        client = AsyncOpenAI(api_key="sk-test-cut", base_url=primary.base_url, retry=QUICK)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES,
                                                      max_tokens=8, stream=True)
        with pytest.raises(openai.APIConnectionError, match="cut off"):
            async for _ in stream:
                pass

    asyncio.run(main())


@pytest.mark.parametrize(("fault", "message"), [
    (FAILED_EVENT, "The model failed mid-way"), (ERROR_EVENT, "Something went wrong mid-stream"),
    (CUT, "cut off"),
])
def test_a_responses_stream_that_fails_raises(servers, fault, message):
    primary, _ = servers
    primary.configure(script=(fault,))
    client = OpenAI(api_key="sk-test-failed", base_url=primary.base_url, retry=QUICK)
    stream = client.responses.create(model="gpt-4o-mini", input="hello", stream=True,
                                     max_output_tokens=8)
    with pytest.raises(openai.APIError, match=message):
        list(stream)


def test_a_chat_stream_cut_off_is_an_error_span_and_the_step_retry_runs_it_again(llm):
    primary, _ = llm
    primary.configure(script=(CUT,))
    run = wf.stream_retried.start({"prompt": "tell me a story", "max_tokens": 8})
    result = run.result(timeout=30)

    assert len(result["text"].split()) == 8, "the whole answer, from attempt 2"
    [retrying] = of_type(run, events.STEP_RETRYING)
    assert "cut off" in retrying.data["error"]
    cut, whole = llm_spans(run)
    assert cut["status"] == "error" and "cut off" in cut["error"]
    assert whole["status"] == "ok" and whole["output"] == result["text"]


def test_a_chat_stream_cut_off_in_a_sub_step_retried_in_place_leaves_no_half_text(llm):
    """The sub-step's retry runs inside the step's attempt: the half answer it streamed
    stood, and a reader showed it before the whole one."""
    primary, _ = llm
    primary.configure(script=(CUT,))
    run = wf.sub_step_stream_retried.start({"prompt": "tell me a story", "max_tokens": 40})
    result = run.result(timeout=30)
    history = run.events()
    [retried] = of_type(run, events.SUB_STEP_RETRYING)
    assert retried.data["sub_step"] == "0:llmtest.tells_in_a_sub_step/0:llmtest.stream@1"
    assert "cut off" in retried.data["error"]
    chunks = [e.data for e in history if e.type == events.STEP_OUTPUT]
    half = [c["chunk"] for c in chunks if c["sub_steps"] == [retried.data["sub_step"]]]
    assert half, "the first attempt streamed part of its answer"
    failed = events.superseded_sub_steps(history)
    assert events.superseded_attempts(history) == set()
    kept = "".join(c["chunk"] for c in chunks if not set(c["sub_steps"]) & failed)
    assert kept == result["text"]


def test_an_async_chat_stream_cut_off_is_retried_by_the_step(llm):
    primary, _ = llm
    primary.configure(script=(CUT,))
    run = wf.astream_retried.start({"prompt": "tell me a story", "max_tokens": 8})
    assert len(run.result(timeout=30)["text"].split()) == 8
    assert [s["status"] for s in llm_spans(run)] == ["error", "ok"]


@pytest.mark.parametrize("fault", [FAILED_EVENT, ERROR_EVENT])
def test_a_failed_responses_stream_is_an_error_span_and_retried(llm, fault):
    primary, _ = llm
    primary.configure(script=(fault,))
    run = wf.respond_stream_retried.start({"prompt": "tell me a story", "max_tokens": 8})
    assert len(run.result(timeout=30)["text"].split()) == 8
    assert [s["status"] for s in llm_spans(run)] == ["error", "ok"]


# -- what a step's retry sends again ---------------------------------------------------------


@pytest.mark.parametrize(("configure", "error"), [
    ({"script": (400,)}, "Invalid request"),
    ({"script": (QUOTA,)}, "quota"),
    ({"rate_429": 1.0, "retry_after": 120}, "not retried"),  # over FLOWKIT_LLM_MAX_RETRY_AFTER
])
def test_the_step_retry_does_not_resend_what_the_client_found_cannot_succeed(llm, configure,
                                                                             error):
    """The default retry_on (Exception) sent a 400 three times, and slept out a
    Retry-After: 120 the client had refused to wait."""
    primary, _ = llm
    primary.configure(**configure)
    run = wf.ask_retried.start({"prompt": "hello"})
    with pytest.raises(StepError, match=error):
        run.result(timeout=30)
    assert len(primary.stats.requests) == 1
    assert of_type(run, events.STEP_RETRYING) == []


def test_a_retry_on_naming_the_error_s_class_still_retries_it(llm):
    primary, _ = llm
    primary.configure(script=(400,))
    run = wf.ask_retried_on_bad_request.start({"prompt": "hello"})
    assert run.result(timeout=30)["text"]
    assert statuses(primary) == [400, 200]


# -- spans of calls that failed otherwise, and of streams --------------------------------------


def test_a_parse_cut_at_its_length_limit_has_its_span_and_its_tokens_counted(llm):
    """LengthFinishReasonError is no openai.APIError: its call, sent and billed, had no span."""
    primary, _ = llm
    primary.configure(script=(LENGTH,))
    run = wf.parse_retried.start({"prompt": "judge this"})
    run.result(timeout=30)

    cut, whole = llm_spans(run)
    assert cut["status"] == "error" and "length" in cut["error"]
    assert cut["completion_tokens"] > 0 and cut["prompt_tokens"] > 0
    assert whole["status"] == "ok"
    [completed] = of_type(run, events.STEP_COMPLETED)
    assert completed.data["tokens"]["total"] == cut["total_tokens"] + whole["total_tokens"]


def test_an_answer_that_is_no_json_has_its_span(llm):
    """A 200 whose body is cut short: the SDK's JSONDecodeError had no span."""
    primary, _ = llm
    primary.configure(script=(BAD_BODY,))
    run = wf.ask_retried.start({"prompt": "hello"})
    assert run.result(timeout=30)["text"]
    bad, good = llm_spans(run)
    assert bad["status"] == "error" and bad["error"] and good["status"] == "ok"


def test_a_streamed_call_with_two_choices_keeps_them_apart(llm):
    run = wf.streamed_n.start({"prompt": "tell me a story", "max_tokens": 6, "n": 2})
    first, second = run.result(timeout=30)["texts"]
    assert first != second
    streamed = "".join(e.data["chunk"] for e in of_type(run, events.STEP_OUTPUT))
    assert streamed == first, "the run's stream is choice 0's text"
    [span] = llm_spans(run)
    assert span["output"] == [first, second]


def test_a_streamed_tool_call_is_recorded_in_its_span(llm):
    run = wf.streamed_tools.start({"prompt": "weather in Paris"})
    calls = run.result(timeout=30)["tool_calls"]
    [span] = llm_spans(run)
    assert span["finish_reason"] == "tool_calls"
    assert span["output"] == {"tool_calls": calls} and calls[0]["name"] == "get_weather"


def test_a_streamed_responses_tool_call_is_recorded_in_its_span(llm):
    """A Chat Completions stream's was; a Responses stream's span said ``output: ""``."""
    run = wf.streamed_response_tools.start({"prompt": "weather in Paris"})
    calls = run.result(timeout=30)["tool_calls"]
    [span] = llm_spans(run)
    assert span["output"] == {"tool_calls": calls} and calls[0]["name"] == "get_weather"


def test_a_stream_dropped_at_a_sub_step_s_timeout_is_an_error_span_and_its_text_unsent(llm):
    """Finished by the step's own thread at the attempt's end, which the sub-step's timeout
    does not abandon: its half-read text was sent to the run's stream and its span ok."""
    primary, _ = llm
    # its first word, read at 0.17 s, is due at 0.295 s (the flush interval and its quarter
    # late): batched still when the sub-step times out (0.2 s), a margin of about 0.1 s for
    # a late timer on a loaded machine; the next comes at 0.47 s
    primary.configure(first_token_latency=0.17, token_latency=0.3)
    run = wf.sub_stream_timed_out.start({"prompt": "tell me a story", "max_tokens": 8})
    assert run.result(timeout=30) == {"text": None}
    [span] = llm_spans(run)
    assert span["status"] == "error" and "timed out" in span["error"]
    assert of_type(run, events.STEP_OUTPUT) == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_stream_dropped_at_the_step_s_timeout_is_an_error_span(llm, flavour):
    """The async one's said "CancelledError: ", with no message."""
    primary, _ = llm
    primary.configure(token_latency=0.3)  # 8 tokens: 2.4 s, past the step's 0.5 s
    timed = wf.stream_timed_out if flavour == "sync" else wf.astream_timed_out
    run = timed.start({"prompt": "tell me a story", "max_tokens": 8})
    with pytest.raises(StepError, match="timeout"):
        run.result(timeout=30)
    [span] = llm_spans(run)
    assert span["status"] == "error" and span["error"] == (
        "StepTimeout: the attempt reading it timed out while this stream was read: the stream "
        "was dropped")
