"""Live OpenTelemetry export from a real worker, as the GenAI semantic conventions define
LLM spans: a worker exports each span to the SDK's InMemorySpanExporter as it ends (and
the run's root span as the run ends); the test reads what it exported once it stopped."""

from __future__ import annotations

import json

import pytest

from flowkit.engine.trace import otel
from flowkit.testing import WorkerProcess
from tests.conftest import ROOT
from tests.llm import otel_workflows as owf
from tests.llm import workflows as wf

pytestmark = pytest.mark.integration

PROMPT = "a prompt that stays private unless asked"


def exported_spans(llm_env, tmp_path, workflow=owf.exported, **env: str) -> tuple[str, list[dict]]:
    """Run ``workflow`` on a worker exporting live; its run id and every span it exported."""
    dump = tmp_path / "spans.json"
    worker = WorkerProcess("tests.llm.otel_app", name="otel", queues=(owf.QUEUE,),
                           env={**llm_env, "OTEL_TEST_SPANS": str(dump), **env}, cwd=ROOT)
    with worker:
        run = workflow.start({"prompt": PROMPT})
        run.result(timeout=30)
    assert worker.proc.returncode == 0, worker.output()
    return run.id, json.loads(dump.read_text())


def by_name(spans: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for span in spans:
        found.setdefault(span["name"], []).append(span)
    return found


def test_llm_spans_carry_the_genai_attributes_and_no_message_content(
    store, servers, llm_env, tmp_path
):
    run_id, spans = exported_spans(llm_env, tmp_path, OTEL_SERVICE_NAME="summaries-worker")
    named = by_name(spans)

    # the root is exported live too: every parent of an exported span was exported
    [root] = named["workflow llmtest_otel"]
    assert root["parent_id"] is None and root["attributes"]["flowkit.run_id"] == run_id
    ids = {s["context"]["span_id"] for s in spans}
    assert all(s["parent_id"] in ids for s in spans if s["parent_id"]), "a parent never exported"
    assert len({s["context"]["trace_id"] for s in spans}) == 1

    plain, streamed = sorted(named[f"chat {wf.MODEL}"],
                             key=lambda s: s["attributes"]["gen_ai.request.max_tokens"])
    [embedding] = named["embeddings text-embedding-3-small"]
    [step] = named["step 0:llmtest.otel"]
    for chat in (plain, streamed):
        a = chat["attributes"]
        assert chat["kind"] == "SpanKind.CLIENT" and chat["parent_id"] == step["context"]["span_id"]
        assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
        assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == wf.MODEL
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.usage.output_tokens"] > 0
        assert a["gen_ai.response.finish_reasons"] in (["stop"], ["length"])
        assert a["server.address"] == "127.0.0.1" and a["server.port"] > 0
        # what the conventions do not cover stays flowkit's
        assert a["flowkit.retries"] == 0 and a["flowkit.rate_limit_wait"] >= 0
        assert a["flowkit.provider"] == "primary"
        assert "flowkit.prompt_tokens" not in a and "flowkit.model" not in a
    assert plain["attributes"]["gen_ai.request.max_tokens"] == 6
    assert plain["attributes"]["gen_ai.request.temperature"] == 0.3
    assert streamed["attributes"]["gen_ai.request.max_tokens"] == 12
    assert streamed["attributes"]["flowkit.stream"] is True
    assert embedding["attributes"]["gen_ai.operation.name"] == "embeddings"

    # message contents only when opted in: a step's and the run's input and output hold
    # the prompt and the answer too (they were exported whatever the setting)
    for span in spans:
        assert not any("messages" in k or k in ("flowkit.input", "flowkit.output")
                       for k in span["attributes"]), span["name"]
        assert PROMPT not in json.dumps(span["attributes"]), span["name"]
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"summaries-worker"}


def test_message_contents_are_exported_when_opted_in(store, servers, llm_env, tmp_path):
    _, spans = exported_spans(llm_env, tmp_path,
                              OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    chats = by_name(spans)[f"chat {wf.MODEL}"]
    for chat in chats:
        sent = json.loads(chat["attributes"]["gen_ai.input.messages"])
        assert sent == [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
        [answer] = json.loads(chat["attributes"]["gen_ai.output.messages"])
        assert answer["role"] == "assistant" and answer["parts"][0]["content"]
        assert [answer["finish_reason"]] == chat["attributes"]["gen_ai.response.finish_reasons"]
    [step] = by_name(spans)["step 0:llmtest.otel"]
    assert json.loads(step["attributes"]["flowkit.input"]) == {"prompt": PROMPT}
    assert {s["resource"]["attributes"]["service.name"] for s in spans} == {"flowkit"}


def test_a_call_that_failed_over_names_the_model_sent_and_keeps_flowkits_failovers(
    store, servers, llm_env, tmp_path
):
    primary, _ = servers
    primary.set_down(True)
    _, spans = exported_spans(llm_env, tmp_path, workflow=owf.failing_over)
    [chat] = by_name(spans)["chat backup-model"]  # the model as the backup provider calls it
    a = chat["attributes"]
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "backup-model"
    assert a["flowkit.requested_model"] == wf.MODEL and a["flowkit.provider"] == "backup"
    [failed] = json.loads(a["flowkit.failovers"])
    assert failed["provider"] == "primary"


@pytest.mark.parametrize("operation", ["chat.completions", "chat.completions.parse",
                                       "responses", "responses.parse"])
def test_every_chat_operation_is_a_chat_span_for_the_conventions(operation, monkeypatch):
    monkeypatch.setenv(otel.CAPTURE_CONTENT, "true")
    found = otel.genai_attributes({
        "operation": operation, "model": "m", "prompt_tokens": 3, "completion_tokens": 2,
        "request": {"max_output_tokens": 64}, "output": "hi", "finish_reason": "stop",
    })
    assert found["gen_ai.operation.name"] == "chat"
    assert found["gen_ai.request.max_tokens"] == 64
    assert "gen_ai.output.messages" in found  # contents too, when opted in


@pytest.mark.parametrize("given", ["a question", [{"role": "user", "content": "a question"}]])
def test_a_responses_call_exports_its_input_as_the_input_messages(given, monkeypatch):
    """The Responses API's prompt is its ``input``: only its output was exported."""
    monkeypatch.setenv(otel.CAPTURE_CONTENT, "true")
    found = otel.genai_attributes({"operation": "responses", "model": "m", "input": given,
                                   "output": "an answer"})
    assert json.loads(found["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "a question"}]}]
