"""The core engine's guarantees, with a real redis-server and a real celery worker."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

import flowkit
from flowkit import config, events
from flowkit.engine import broker, canvas, control
from flowkit.store import get_store
from tests import workflows as wf
from tests.conftest import counts, open_gate, reached_gate, wait_until

pytestmark = pytest.mark.integration
WAIT = 20


@pytest.fixture(autouse=True)
def _deployment(store, worker):
    """Every test here runs against a clean store and the session's worker."""


def types(run) -> list[str]:
    return [e.type for e in run.events()]


@pytest.mark.parametrize("forged", [{"component": "t.add_one", "input": {"n": 41}}, "yes"])
def test_an_output_holding_the_continuation_mark_fails_its_step_saying_so(forged):
    """A step's output that held "$continue" (an echo of the run's input, an LLM's JSON
    answer) was taken for a continue_with: it ran the component it named with the input it
    gave, or (not a continuation's shape) failed every resume, and the run hung."""
    run = wf.echoing.start({"$continue": forged, "n": 1})
    with pytest.raises(flowkit.StepError) as err:
        run.result(WAIT)
    assert "holds the key '$continue'" in str(err.value)
    assert err.value.step == "0:t.echo"
    assert counts(run).get("add_one") is None


def test_a_chain_runs_and_its_stream_holds_the_documented_events():
    run = wf.simple.start({"n": 3})
    assert run.state == "queued"
    assert run.result(WAIT) == {"n": 8}
    assert types(run) == [
        "run.queued", "run.started",
        "step.started", "step.completed", "step.started", "step.completed",
        "run.succeeded",
    ]
    evs = run.events()
    assert [e.id for e in evs] == sorted(e.id for e in evs)
    started = evs[2].data
    assert started["step"] == "0:t.add_one" and started["attempt"] == 1 and started["ts"] > 0
    assert evs[3].data["output"] == {"n": 4} and evs[3].data["duration"] >= 0
    assert evs[-1].data["output"] == {"n": 8}
    record = run.refresh()
    assert record.state == "succeeded" and record.output == {"n": 8}
    assert record.created_at <= record.started_at <= record.finished_at
    assert counts(run) == {"add_one": 1, "double": 1}


def test_components_whose_names_are_no_python_identifiers_run():
    # Celery builds a function named after each task: "step_t.send-email: to/user" was a
    # SyntaxError when the worker registered it, and start() raised it too
    run = wf.oddly_named.start({"n": 1})
    assert run.result(WAIT) == {"n": 6}
    assert [e.data["step"] for e in run.events() if e.type == "step.completed"] == [
        "0:t.send-email: to/user", "1:tests.workflows.<lambda>"]


def test_a_redelivered_canvas_skips_checkpointed_steps():
    run = wf.chain3.start({"n": 1})
    reached_gate(run, "gated")
    # the same canvas delivered again (as after a broker redelivery), while step 2 runs
    canvas.enqueue(wf.chain3, run.id, 0, run.input, run.queue)
    open_gate(run, "gated")
    assert run.result(WAIT) == {"n": 204}
    assert counts(run) == {"add_one": 1, "gated": 1, "double": 1}


def test_a_restarted_run_resumes_from_its_checkpoints():
    run = wf.chain3.start({"n": 1})
    assert reached_gate(run, "gated") == 1
    store = get_store()
    gen, _ = store.restart(run.id, expected_state="running", reason="test restart", now=1e12)
    canvas.enqueue(wf.chain3, run.id, gen, run.input, run.queue)
    assert reached_gate(run, "gated") == 2  # the in-flight step runs again, as attempt 2
    open_gate(run, "gated")
    open_gate(run, "gated")
    assert run.result(WAIT) == {"n": 204}
    # the checkpointed first step never ran again; the step in flight ran once per attempt
    assert counts(run) == {"add_one": 1, "gated": 2, "double": 1}
    restarted = [e for e in run.events() if e.type == "run.restarted"][0]
    assert restarted.data["superseded"][0]["step"] == "1:t.gated"
    assert restarted.data["superseded"][0]["attempt"] == 1
    assert events.superseded_attempts(run.events()) == {("1:t.gated", 1)}


def test_the_text_a_sub_step_streamed_before_it_failed_and_ran_again_in_place_is_dropped():
    """A sub-step (a component called inside a step: an LLM call's wrapper) retries inside
    its step's attempt: its half answer stood under that attempt, and every reader showed
    it, then the whole answer after it."""
    from flowkit.cli.live import RunView

    run = wf.retried_sub_steps.start({"topic": "x"})
    assert run.result(WAIT) == {"text": "answer on x"}
    history = run.events()
    retried = [e.data for e in history if e.type == events.SUB_STEP_RETRYING]
    outer, inner = "0:t.streams_around_retried_sub_steps/0:t.outline_then_answer", (
        "0:t.streams_around_retried_sub_steps/0:t.outline_then_answer/0:t.half_then_whole")
    assert [(r["sub_step"], r["error"]) for r in retried] == [
        (f"{inner}@1", "ConnectionError: the stream was cut off"),
        (f"{outer}@1", "ValueError: refused the first answer")]
    assert {(r["step"], r["attempt"]) for r in retried} == {(
        "0:t.streams_around_retried_sub_steps", 1)}
    chunks = [(e.data.get("sub_steps"), e.data["chunk"]) for e in history
              if e.type == events.STEP_OUTPUT]
    # the outer sub-step's 2nd attempt calls the inner one anew, under its own key
    assert chunks[:4] == [(None, "Intro. "), ([f"{outer}@1"], "Outline. "),
                          ([f"{outer}@1", f"{inner}@1"], "Half "),
                          ([f"{outer}@1", f"{inner}@2"], "Half ")]
    failed = events.superseded_sub_steps(history)
    assert failed == {f"{inner}@1", f"{outer}@1"}
    assert events.superseded_attempts(history) == set()
    kept = "".join(chunk for subs, chunk in chunks if not set(subs or ()) & failed)
    assert kept == "Intro. Outline. Half and whole. Done."
    view = RunView(run.id)  # flowkit follow's live view
    for event in history:
        view.feed(event.to_dict())
    assert view.steps["0:t.streams_around_retried_sub_steps"].text == kept


def test_a_sub_step_retrying_event_redacts_the_step_s_secrets():
    run = wf.signing_with_a_key.start({"api_key": "sk-very-secret-1234"})
    assert run.result(WAIT) == {"signed": "signed"}
    [retried] = [e.data for e in run.events() if e.type == events.SUB_STEP_RETRYING]
    assert "sk-very-secret-1234" not in json.dumps(retried)
    assert retried["error"].startswith("PermissionError: key ") and "refused" in retried["error"]


def test_a_step_retries_with_backoff_and_the_run_succeeds():
    run = wf.retrying.start({"n": 1, "fail_times": 2})
    assert run.result(WAIT) == {"n": 4}
    evs = run.events()
    retrying = [e.data for e in evs if e.type == "step.retrying"]
    assert [(r["attempt"], r["delay"]) for r in retrying] == [(1, 0.1), (2, 0.2)]
    assert retrying[0]["error"] == "Flaky: flaky failure 1"
    assert retrying[0]["step"] == "1:t.flaky"
    chunks = [(e.data["attempt"], e.data["chunk"]) for e in evs if e.type == "step.output"]
    assert chunks == [(1, "partial output of attempt 1"), (2, "partial output of attempt 2")]
    # a client drops chunks of the attempts reported as retried
    assert events.superseded_attempts(evs) == {("1:t.flaky", 1), ("1:t.flaky", 2)}
    completed = [e.data for e in evs if e.type == "step.completed" and e.data["step"] == "1:t.flaky"]
    assert completed[0]["attempt"] == 3
    assert counts(run) == {"add_one": 1, "flaky": 3, "double": 1}
    assert run.refresh().attempts == {"0:t.add_one": 1, "1:t.flaky": 3, "2:t.double": 1}


def test_when_retries_run_out_the_run_fails_with_step_error_and_history():
    run = wf.exhausted.start({"n": 1})
    with pytest.raises(flowkit.StepError) as err:
        run.result(WAIT)
    assert err.value.step == "1:t.flaky"
    record = run.refresh()
    assert record.state == "failed" and record.failed_step == "1:t.flaky"
    assert record.error["message"] == "flaky failure 2" and record.error["type"] == "Flaky"
    assert [a["attempt"] for a in record.error["attempts"]] == [1, 2]
    assert types(run)[-2:] == ["step.failed", "run.failed"]
    assert get_store().checkpoint(run.id, "0:t.add_one") == '{"n":2}'
    # where in the app's code: the error alone named neither file nor line
    line = _line_of("tests/workflows.py", 'raise Flaky(f"flaky failure')
    assert record.error["where"] == f"tests/workflows.py:{line} in flaky"


def _line_of(path: str, text: str) -> int:
    with open(path) as source:
        return next(n for n, line in enumerate(source, 1) if text in line)


def _helper_that_raises() -> None:
    raise NameError("name 'oops' is not defined")


def test_an_errors_origin_is_the_innermost_line_of_the_apps_code_it_went_through():
    from flowkit.errors import error_origin

    with pytest.raises(NameError) as in_a_helper:
        _helper_that_raises()
    line = _line_of("tests/test_engine.py", "    raise NameError(\"name 'oops'")
    assert error_origin(in_a_helper.value) == f"tests/test_engine.py:{line} in _helper_that_raises"
    with pytest.raises(json.JSONDecodeError) as in_a_library:
        json.loads("not json")  # raised in the standard library: placed at the app's call
    line = _line_of("tests/test_engine.py", '        json.loads("not json")  # raised')
    assert error_origin(in_a_library.value) == (
        f"tests/test_engine.py:{line} in "
        "test_an_errors_origin_is_the_innermost_line_of_the_apps_code_it_went_through")


@pytest.mark.parametrize("depth, says", [
    (700, "the output of step 0:t.nested nests objects and arrays too deeply to report (keep "
          "it under 64 levels)"),
    (5000, "maximum recursion depth exceeded"),
])
def test_an_output_nested_too_deeply_fails_its_run_and_says_so(depth, says):
    """JSON took 700 levels, the recursive redaction of the step's event did not: the task
    died while reporting the step, and the run stayed running with no end event. Deeper,
    JSON itself refuses it."""
    run = wf.nesting.start({"depth": depth})
    with pytest.raises(flowkit.StepError) as err:
        run.result(WAIT)
    assert err.value.step == "0:t.nested"
    assert says in str(err.value)
    assert types(run)[-2:] == ["step.failed", "run.failed"]


@pytest.mark.parametrize("emit, says", [
    (False, "the output of step 0:t.not_a_number must be JSON-serialisable (at ['score']): "
            "it holds NaN or Infinity"),
    (True, "a step.output event must be JSON-serialisable (at ['chunk']['score']): it holds "
           "NaN or Infinity"),
])
def test_a_nan_in_an_output_or_event_fails_the_step_instead_of_reaching_readers(emit, says):
    """NaN went into the store as the bare word NaN: the API then served it, and a
    browser's JSON.parse failed on the whole event or run. The error says where it is."""
    run = wf.not_numbers.start({"emit": emit})
    with pytest.raises(flowkit.StepError) as err:
        run.result(WAIT)
    assert says in str(err.value)
    for event in flowkit.history(run.id):
        json.loads(json.dumps(event.data), parse_constant=lambda word: pytest.fail(word))


def test_an_output_with_two_keys_json_writes_as_one_fails_the_step_instead_of_losing_one():
    """``{1: "int", "1": "str"}`` was stored as ``{"1":"int","1":"str"}``, which every JSON
    reader reads back as ``{"1": "str"}``: the step completed with half its output gone."""
    run = wf.not_numbers.start({"clash": True})
    with pytest.raises(flowkit.StepError) as err:
        run.result(WAIT)
    assert ("the output of step 0:t.not_a_number cannot be JSON as it is: at ['by_id'] keys 1 "
            "and '1' are both \"1\"") in str(err.value)
    assert types(run)[-2:] == ["step.failed", "run.failed"]


def test_a_step_whose_output_cannot_be_kept_has_its_attempt_span_say_error():
    """The output is kept after the attempt's span closed: the run failed, its span said ok."""
    run = wf.not_numbers.start({"emit": False})
    with pytest.raises(flowkit.StepError):
        run.result(WAIT)
    [attempt] = [s for s in control.trace(run.id) if s.get("kind") == "step"]
    assert attempt["status"] == "error"
    assert attempt["error"].startswith("TypeError: the output of step 0:t.not_a_number must be "
                                       "JSON-serialisable")


def test_a_nan_in_an_input_is_refused_before_anything_is_stored():
    with pytest.raises(TypeError, match="it holds NaN or Infinity, which JSON cannot carry"):
        wf.not_numbers.start({"x": float("nan")})
    assert flowkit.list_runs() == []


def test_an_input_nested_too_deeply_is_refused_before_anything_is_stored():
    deep: list = []
    for _ in range(64):
        deep = [deep]
    with pytest.raises(flowkit.ValidationError) as err:
        wf.pacing.start({"x": deep})  # 65 levels with the input object
    assert err.value.fields == {"_schema": ["Input nested more than 64 levels deep; "
                                            "flatten it."]}
    assert flowkit.list_runs() == []


def test_retrying_a_failed_run_resumes_from_the_failed_step():
    r = get_store().redis
    run = wf.resumable.start({"n": 5})
    r.set(f"fail:{run.id}", 1)  # before the worker reaches the step: it is slower than this
    with pytest.raises(flowkit.StepError):
        run.result(WAIT)
    r.delete(f"fail:{run.id}")
    assert flowkit.retry(run.id).state == "queued"
    assert run.result(WAIT) == {"n": 12}
    assert counts(run) == {"add_one": 1, "switch": 2, "double": 1}
    with pytest.raises(flowkit.InvalidState):
        flowkit.retry(run.id)


def test_same_idempotency_key_returns_the_same_run_enqueued_once():
    first = wf.simple.start({"n": 1}, idempotency_key="order-42")
    second = wf.simple.start({"n": 1}, idempotency_key="order-42")
    assert second.id == first.id and first.created and not second.created
    assert first.result(WAIT) == {"n": 4}
    assert counts(first) == {"add_one": 1, "double": 1}
    assert len(flowkit.list_runs()) == 1
    with pytest.raises(flowkit.IdempotencyConflict):
        wf.simple.start({"n": 2}, idempotency_key="order-42")


@pytest.mark.parametrize("workflow", [wf.simple, wf.per_tenant], ids=["plain", "keyed"])
def test_a_start_that_makes_the_run_of_a_claim_whose_maker_stopped_returns_that_run(workflow):
    """A key claimed by a starter that died before it stored its run: the next start made
    the run under the claim's id but returned its own, a run id that named no run (and a
    keyed workflow asked for its slot under that id)."""
    store = get_store()
    given = {"n": 1} if workflow is wf.simple else {"tenant": "claimed"}
    orphan = "01KCLAIMEDBYASTARTERTHATDIED"
    store.redis.set(store.keys.idempotency(workflow.name, "claimed-then-died"), orphan)
    run = workflow.start(given, idempotency_key="claimed-then-died")
    assert (run.id, run.created) == (orphan, True)
    assert run.wait(WAIT).state == "succeeded"
    again = workflow.start(given, idempotency_key="claimed-then-died")
    assert (again.id, again.created) == (orphan, False)


def test_an_input_sent_again_with_its_keys_in_another_order_is_the_same_input():
    """A client retrying a start with its JSON in another key order got an
    IdempotencyConflict instead of its run (no schema, or inside a fields.Dict)."""
    first = wf.echoing.start({"a": 1, "b": {"x": 1, "y": 2}}, idempotency_key="order-keys",
                             delay=3600)  # scheduled an hour ahead: no worker runs it
    again = wf.echoing.start({"b": {"y": 2, "x": 1}, "a": 1}, idempotency_key="order-keys",
                             delay=3600)
    assert again.id == first.id and not again.created
    with pytest.raises(flowkit.IdempotencyConflict):  # another input is still one
        wf.echoing.start({"a": 1, "b": {"x": 1, "y": 3}}, idempotency_key="order-keys")
    flowkit.cancel(first.id)


def test_a_key_whose_stored_input_an_older_release_kept_with_nan_is_a_conflict():
    # scheduled an hour ahead: no worker touches it after this test
    first = wf.simple.start({"n": 1}, idempotency_key="order-nan", delay=3600)
    store = get_store()  # as a release that let NaN through stored it
    store.redis.hset(store.keys.run(first.id), "input", '{"n":NaN}')
    with pytest.raises(flowkit.IdempotencyConflict):  # not a ValueError from re-serialising
        wf.simple.start({"n": 1}, idempotency_key="order-nan", delay=3600)


def test_bad_input_raises_field_errors_and_creates_no_run():
    with pytest.raises(flowkit.ValidationError) as err:
        wf.simple.start({"n": "three"})
    assert err.value.fields == {"n": ["Not a valid integer."]}
    assert flowkit.list_runs() == []
    keys = get_store().keys  # nothing but the workers' presence, which they write each beat
    assert set(get_store().redis.keys("*")) <= {keys.workers, keys.nodes}


def test_fan_out_runs_one_step_per_item_and_gathers_in_order():
    run = wf.fanned.start({"n": 4})
    assert run.result(WAIT) == {"total": 0 + 1 + 4 + 9}
    keys = {e.data["step"] for e in run.events() if e.type == "step.completed"}
    assert {"1[0]:t.square", "1[3]:t.square", "0:t.split", "2:t.total"} <= keys
    assert counts(run) == {"split": 1, "square0": 1, "square1": 1, "square2": 1, "square3": 1,
                           "total": 1}


def test_fan_out_over_an_empty_list_gives_an_empty_list():
    assert wf.fanned.start({"n": 0}).result(WAIT) == {"total": 0}


def test_parallel_branches_each_get_the_input_and_join_in_order():
    run = wf.branches.start({"n": 1})
    assert run.result(WAIT) == {"parts": ["L2", "R4"]}
    keys = [e.data["step"] for e in run.events() if e.type == "step.completed"]
    assert set(keys) == {"0:t.add_one", "1.0:t.left", "1.1.0:t.double", "1.1.1:t.right", "2:t.join"}


def test_a_run_opening_with_parallel_branches_joins_them():
    """Its first message (a chord's) is sent by Celery, told to ignore the result as every
    flowkit send is: with the Redis backend the chord joins all the same."""
    run = wf.opening_branches.start({"n": 1})
    assert run.result(WAIT) == {"parts": ["L1", "R1"]}


def test_an_agent_loop_decides_at_run_time_what_runs_next():
    run = wf.looping.start({})
    assert run.result(WAIT) == {"answer": 0 + 10 + 20}
    keys = [e.data["step"] for e in run.events() if e.type == "step.completed"]
    assert keys == ["0:t.agent", "0+1:t.tool", "0+2:t.agent", "0+3:t.tool", "0+4:t.agent",
                    "0+5:t.tool", "0+6:t.agent"]


def test_progress_and_output_chunks_reach_the_stream_in_order():
    run = wf.chatty.start({"n": 1})
    run.result(WAIT)
    evs = [e.data for e in run.events() if e.type in ("step.progress", "step.output")]
    assert [e.get("chunk") or e["message"] for e in evs] == [
        "word 1/3", "alpha", "word 2/3", "beta", "word 3/3", "gamma",
    ]
    assert [e["fraction"] for e in evs if e["type"] == "step.progress"] == [1 / 3, 2 / 3, 1.0]
    assert all(e["step"] == "0:t.talker" and e["attempt"] == 1 for e in evs)


def test_a_steps_eta_is_estimated_from_its_pace_once_it_has_one():
    """An estimate from the first milliseconds said "0.001 s left" of steps that had minutes
    to go: a step's ETA comes once it has run a second (step.ETA_AFTER_SECONDS)."""
    run = wf.pacing.start({})
    run.result(WAIT)
    first, later = [e.data for e in run.events() if e.type == "step.progress"]
    assert first.get("eta") is None and first["fraction"] == 0.5
    assert 1.0 <= later["eta"] < 4.0  # as long again as it took to be half done (and a stall)


def test_a_step_reads_the_run_context():
    run = wf.reading.start({"n": 7})
    assert run.result(WAIT) == {"input": {"n": 7, "fail_times": 2}, "first": {"n": 8},
                                "step": "1:t.ctx_reader"}


def test_cached_components_reuse_results_across_runs():
    r = get_store().redis
    first = wf.caching.start({"key": "abc"})
    assert first.result(WAIT) == {"key": "abc", "value": "ABC"}
    second = wf.caching.start({"key": "abc"})
    assert second.result(WAIT) == {"key": "abc", "value": "ABC"}
    assert r.get("cached-calls:abc") == "1"
    done = [e.data for e in second.events() if e.type == "step.completed"][0]
    assert done["cached"] is True
    wf.caching.start({"key": "xyz"}).result(WAIT)
    assert r.get("cached-calls:xyz") == "1"
    wf.caching_v2.start({"key": "abc"}).result(WAIT)  # a bumped version is a new cache
    assert r.get("cached-calls:abc") == "2"
    wf.caching_v2.start({"key": "abc"}).result(WAIT)
    assert r.get("cached-calls:abc") == "2"


def test_a_cached_component_s_version_is_the_one_of_the_code_that_runs_it(monkeypatch):
    """The version travelled in the step's message, from the process that started the run:
    in a rolling deploy a worker of version 2 answered with version 1's cached output."""
    from flowkit.component import lookup

    r = get_store().redis
    wf.caching.start({"key": "rolling"}).result(WAIT)
    assert r.get("cached-calls:rolling") == "1"
    monkeypatch.setattr(lookup("t.cached"), "version", "2")  # the worker's code is version 2
    run = wf.caching.start({"key": "rolling"})  # started by code whose version was 1
    assert run.result(WAIT) == {"key": "rolling", "value": "ROLLING"}
    assert r.get("cached-calls:rolling") == "2", "version 1's cached output answered"


def test_secret_fields_never_reach_the_stream_but_the_next_step_gets_them():
    run = wf.signing_in.start({"user": "ada", "password": "hunter2-very-secret"})
    assert run.result(WAIT) == {"user": "ada", "token_length": len("tok-hunter2-very-secret-issued")}
    shown = [e.data["output"] for e in run.events() if e.type == "step.completed"][0]
    assert shown == {"user": "ada", "token": "[redacted]"}
    assert "hunter2-very-secret" not in repr([e.to_dict() for e in run.events()])


@flowkit.component(name="t.log_in")
def log_in(data: dict) -> dict:
    raise ValueError(f"login failed for token {data['token']}")


logging_in = flowkit.Workflow("logging_in", [
    log_in.secret("token").retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01))])


def test_an_error_echoing_a_secret_input_is_redacted_in_the_record_events_trace_and_log(caplog):
    """Redacted in the step's span only: the run's error (its record, ``run.failed``, the
    workflow span its OTLP export is made from), ``step.retrying`` and the worker's log line
    and traceback kept the secret."""
    from flowkit.engine import trace  # noqa: PLC0415

    secret = "sk-supersecret-123456"
    with caplog.at_level(logging.WARNING, logger="flowkit.engine.executor"):
        run = logging_in.start({"token": secret})
        assert run.wait(WAIT).state == "failed"
        wait_until(lambda: "failed at step" in caplog.text, WAIT, "the failure's log line")
    done = flowkit.get_run(run.id)
    assert done.error["message"] == "login failed for token [redacted]"
    assert [a["error"] for a in done.error["attempts"]] == [
        "ValueError: login failed for token [redacted]"] * 2
    said = json.dumps([e.to_dict() for e in run.events()])
    assert "step.retrying" in said and "[redacted]" in said
    spans = trace.read(run.id)
    assert spans[0]["kind"] == "workflow" and spans[0]["error"]["message"].endswith("[redacted]")
    assert secret not in said + json.dumps(spans) + caplog.text
    assert "raise ValueError" in caplog.text  # the traceback is still logged, redacted


def test_a_retried_run_that_fails_again_is_notified_again_once():
    """A run's failure was notified once for good: failed again after a retry, no hook,
    webhook or root span said so."""
    from flowkit.engine import notify  # noqa: PLC0415

    told: list[str] = []

    def hook(run) -> None:
        told.append(run.id)

    flowkit.hooks.run_failed.append(hook)
    try:
        run = wf.retrying.start({"n": 1, "fail_times": 9})  # 3 attempts a try: fails twice
        assert run.wait(WAIT).state == "failed"
        wait_until(lambda: told == [run.id], WAIT, "the first failure's notice")
        run.retry()
        assert flowkit.get_run(run.id).wait(WAIT).state == "failed"
        wait_until(lambda: told == [run.id] * 2, WAIT, "the second failure's notice")
        notify.run_failed(run.id)  # another process that failed it too: told once an end
        assert told == [run.id] * 2
    finally:
        flowkit.hooks.run_failed.remove(hook)


def test_a_handed_over_step_is_not_said_lost_its_next_attempt_is_in_line():
    """A drain's (or flowkit dev's reload's) hand-over keeps a lapsed lease with its token:
    the run's record said its worker had stopped beating."""
    from flowkit.store import HANDED_OVER  # noqa: PLC0415

    lapsed = {"expires": time.time() - 60, "worker": "w@h:1", "attempt": 1}
    assert control.lost_steps({"0:t.a": {**lapsed, "token": HANDED_OVER}}) is None
    assert control.lost_steps({"0:t.a": {**lapsed, "token": "t1"}}).startswith(
        "step 0:t.a's worker (w@h:1) stopped beating")


def test_a_component_called_inside_a_step_is_a_checkpointed_sub_step():
    run = wf.inline.start({"n": 1})
    reached_gate(run, "with_inline")
    gen, _ = get_store().restart(run.id, expected_state="running", reason="test", now=1e12)
    canvas.enqueue(wf.inline, run.id, gen, run.input, run.queue)
    reached_gate(run, "with_inline")
    open_gate(run, "with_inline")
    open_gate(run, "with_inline")
    assert run.result(WAIT) == {"n": 4}
    c = counts(run)
    assert c["with_inline"] == 2 and c["add_one"] == 1  # the inline call was not repeated
    assert get_store().checkpoint(run.id, "0:t.with_inline/0:t.add_one") == '{"n":2}'


def test_a_step_over_its_timeout_fails_its_attempts():
    run = wf.timing_out.start({"sleep": 3})
    with pytest.raises(flowkit.StepError, match="0.5s timeout"):
        run.result(WAIT)
    assert [e.data["attempt"] for e in run.events() if e.type == "step.retrying"] == [1]


def test_cancel_stops_the_run_at_the_next_step_boundary():
    run = wf.chain3.start({"n": 1})
    reached_gate(run, "gated")
    assert flowkit.cancel(run.id).state == "cancelled"
    open_gate(run, "gated")
    assert run.wait(WAIT).state == "cancelled"
    assert types(run)[-1] == "run.cancelled"
    assert "double" not in counts(run)
    with pytest.raises(flowkit.InvalidState):
        flowkit.cancel(run.id)


def test_records_and_streams_expire_after_the_retention():
    run = wf.simple.start({"n": 1})
    run.result(WAIT)
    store = get_store()
    retention = flowkit.get_settings().retention_seconds
    for key in (store.keys.run(run.id), store.keys.events(run.id), store.keys.checkpoints(run.id)):
        assert 0 < store.redis.ttl(key) <= retention, key


def test_unknown_runs_say_so():
    with pytest.raises(flowkit.RunNotFound):
        flowkit.get_run("01NOPE")


def test_wait_is_woken_by_the_end_of_the_run(monkeypatch):
    # re-reads only every 2 minutes: returning in time means the end itself woke it
    monkeypatch.setattr(config, "_settings", config.get_settings().replace(wait_recheck_seconds=120))
    run = wf.chain3.start({"n": 1})
    reached_gate(run, "gated")
    ended: dict = {}
    waiter = threading.Thread(target=lambda: ended.update(run=flowkit.wait(run.id, timeout=60)))
    waiter.start()
    channel = get_store().keys.done(run.id)
    wait_until(lambda: get_store().redis.pubsub_numsub(channel)[0][1] == 1, 10, "the waiter to listen")
    open_gate(run, "gated")
    waiter.join(WAIT)
    assert ended["run"].state == "succeeded" and ended["run"].output == {"n": 204}


def test_steps_leave_no_celery_results_behind(redis_server):
    """Checkpoints and the run record hold every output: the result backend stays unused,
    and chords (parallel branches, fan-out) still join without it."""
    import redis

    backend = redis.Redis(port=redis_server.port, db=0)
    before = set(backend.scan_iter("celery-task-meta-*"))
    for run in (wf.simple.start({"n": 1}), wf.branches.start({"n": 1}), wf.looping.start({})):
        assert run.wait(WAIT).state == "succeeded"
    new = set(backend.scan_iter("celery-task-meta-*")) - before
    assert [json.loads(backend.get(k))["result"] for k in new] == []


def test_the_worker_refuses_pickled_messages(start_worker):
    """A real worker process: the refusal is in its log (the embedded worker logs elsewhere)."""
    from tests.app import app

    worker = start_worker("pickle", queues=("pickle",))
    app.send_task("flowkit.step.t.add_one", args=({"n": 1},), serializer="pickle", queue="pickle",
                  kwargs={"run_id": "x", "key": "0:t.add_one", "gen": 0})
    wait_until(lambda: "untrusted content of type pickle" in worker.output(), WAIT,
               "the worker to log its refusal")
    assert "flowkit.step.t.add_one" not in worker.output().split("untrusted content")[1]


def test_a_worker_refuses_to_start_when_a_step_can_outlive_the_visibility_timeout(start_worker):
    with pytest.raises(RuntimeError) as err:
        start_worker("short-visibility", env_overrides={"FLOWKIT_VISIBILITY_TIMEOUT": "1"})
    assert "flowkit: worker refuses to start: A step may run for 1.05s" in str(err.value)
    assert "Set FLOWKIT_VISIBILITY_TIMEOUT above 2" in str(err.value)


def test_a_run_on_a_queue_of_its_own_fans_out_and_joins_there(start_worker):
    """Workers that consume only the run's queue complete every hop, the fan-out's join too."""
    start_worker("own-queue", queues=("own-queue",))
    previous = broker._app
    try:
        flowkit.create_celery_app(
            "starter", flowkit.get_settings().replace(default_queue="own-queue"))
        run = wf.fanned.start({"n": 3})
    finally:
        broker.use_app(previous)
        previous.set_current()
    assert run.queue == "own-queue"
    assert run.result(WAIT) == {"total": 0 + 1 + 4}


def test_a_second_in_thread_worker_in_the_process_is_refused_and_the_first_goes_on(worker):
    from flowkit.testing import InThreadWorker
    from tests.app import app

    second = InThreadWorker(app, name="second")
    with pytest.raises(RuntimeError, match="InThreadWorker main@.* already runs in this process"):
        second.start()
    second.stop()  # a no-op: it never started, and must not release the first one's place
    with pytest.raises(RuntimeError, match="already runs in this process"):
        InThreadWorker(app, name="third").start()
    assert wf.simple.start({"n": 1}).result(WAIT) == {"n": 4}


# -- steps that end badly in ways that escaped the engine ----------------------------------


@pytest.mark.parametrize("how, says", [
    ("exit", "ComponentExit: the step's code raised SystemExit(2): it would end the worker's "
             "thread or process, not the step; raise an exception instead"),
    ("interrupt", "the step's code raised KeyboardInterrupt: it would end"),
    ("own", "the step's code raised OwnSignal(stop): it would end"),
])
def test_a_step_raising_system_exit_or_another_base_exception_fails_like_any_error(how, says):
    """It escaped into Celery's pool: a threads pool kept the task active for good (the
    slot was lost, the run stayed running), a prefork child died and the step ran again at
    each restart until the run failed as "worker lost"."""
    run = wf.misbehaving.start({"how": how})
    with pytest.raises(flowkit.StepError) as err:
        run.result(WAIT)
    assert says in str(err.value) or says in run.refresh().error["attempts"][-1]["error"]
    assert counts(run) == {"misbehaves": 1}
    assert wf.simple.start({"n": 1}).result(WAIT) == {"n": 4}  # the worker's slots are free


@pytest.mark.parametrize("how, says", [
    ("surrogate-output", "the output of step 0:t.misbehaves must be UTF-8 text: it holds a "
                         "lone surrogate (\\ud800)"),
    ("surrogate-error", "bad \\ud800 text"),
    ("unreadable-error", "<its message could not be read: RuntimeError in __str__>"),
])
def test_text_redis_cannot_store_fails_the_run_at_once_and_says_so(how, says):
    """The failure's own record failed to encode: the run stayed running, and the reaper
    ran the finished step again until it failed the run as "worker lost"."""
    run = wf.misbehaving.start({"how": how})
    with pytest.raises(flowkit.StepError) as err:
        run.result(WAIT)
    assert says in str(err.value)
    assert run.refresh().restarts == 0 and counts(run) == {"misbehaves": 1}
    assert types(run)[-2:] == ["step.failed", "run.failed"]


def test_a_start_whose_input_holds_a_lone_surrogate_is_a_type_error_saying_so():
    with pytest.raises(TypeError, match=r"must be UTF-8 text: it holds a lone surrogate "
                                        r"\(\\ud800\)"):
        wf.misbehaving.start({"how": "x\ud800"})


def test_a_huge_error_message_is_kept_cut_to_its_start_and_end():
    """A 3 MB message (a provider's HTML page) was written whole, twice per failure."""
    run = wf.misbehaving.start({"how": "huge-error"})
    with pytest.raises(flowkit.StepError):
        run.result(WAIT)
    message = run.refresh().error["message"]
    assert len(message) < 4100 and message.startswith("<html>xxx")
    assert message.endswith("xxx</html>") and "[... 2996013 characters cut ...]" in message
    assert all(len(json.dumps(e.data)) < 10_000 for e in run.events())


def test_an_abandoned_attempt_s_late_sub_step_is_not_kept_for_the_next_attempt():
    """Attempt 1 timed out while its sub-step ran on; the sub-step's output, made from
    attempt 1's input, was checkpointed and attempt 2 replayed it as its own."""
    run = wf.abandoning.start({})
    ended = run.wait(WAIT)
    assert ended.output == {"made_by_attempt": 2}, [(e.type, e.data) for e in run.events()]


def test_a_sub_step_that_timed_out_is_retried_and_its_step_goes_on():
    """Its timeout marked the whole step's attempt abandoned: the step's outcome was
    dropped ("cancelled or restarted"), and the run hung until the reaper restarted it."""
    run = wf.sub_step_retried.start({})
    assert run.result(WAIT) == {"call": 2}
    chunks = [e.data["chunk"] for e in run.events() if e.type == "step.output"]
    assert chunks == ["the step goes on"]  # the timed-out call's late text was refused
    assert "step.retrying" not in types(run)  # the sub-step retried, not the step


def test_a_sub_step_s_retry_makes_its_calls_anew_and_a_replay_keeps_each_attempt_s():
    """Its retry replayed the calls its failed attempt had checkpointed: a sub-step that
    checks an LLM's answer and retries got the same refused answer at every attempt."""
    topic = f"t{time.time_ns()}"
    run = wf.drafting.start({"topic": topic})
    assert run.result(WAIT) == {"text": f"{topic} draft 2"}
    step = "0:t.drafts_until_valid"
    store = get_store()
    assert {key: json.loads(value) for key, value in store.checkpoints(run.id).items()
            if key.startswith(f"{step}/")} == {
        f"{step}/0:t.validated/0:t.drafts": f"{topic} draft 1",  # attempt 1, refused
        f"{step}/0:t.validated@2/0:t.drafts": f"{topic} draft 2",
        f"{step}/0:t.validated": f"{topic} draft 2",
    }
    assert wf.DRAFTS[topic] == 2


def test_a_sub_step_run_again_replays_each_of_its_attempts_as_it_went():
    """The step runs again (here a retry of its run; a restart alike) with its sub-step's
    calls checkpointed but not the sub-step's output (as when its worker died between
    them): attempt 1 replays its refused draft, attempt 2 its accepted one, and no draft is
    asked for again."""
    topic = f"t{time.time_ns()}"
    wf.FAIL_AFTER_DRAFTS.add(topic)
    run = wf.drafting.start({"topic": topic})
    assert run.wait(WAIT).state == "failed"
    store = get_store()
    assert store.redis.hdel(store.keys.checkpoints(run.id),
                            "0:t.drafts_until_valid/0:t.validated") == 1
    assert flowkit.retry(run.id).result(WAIT) == {"text": f"{topic} draft 2"}
    assert wf.DRAFTS[topic] == 2


def test_a_run_retried_after_its_sub_step_spent_its_attempts_asks_anew():
    """Its step run again replayed each refused attempt and failed alike: a retried run (or
    the step's own retry) could never succeed, after any incident."""
    topic = f"t{time.time_ns()}"
    run = wf.drafting_strictly.start({"topic": topic})
    assert run.wait(WAIT).state == "failed"
    assert wf.DRAFTS[topic] == 3
    key = "0:t.drafts_until_strictly_valid/0:t.strictly_validated"
    store = get_store()
    assert store.checkpoint(run.id, key + "!spent") == "3"
    assert flowkit.retry(run.id).result(WAIT) == {"text": f"{topic} draft 4"}
    assert wf.DRAFTS[topic] == 4
    assert json.loads(store.checkpoint(run.id, f"{key}@4/0:t.drafts")) == f"{topic} draft 4"


def test_a_step_that_caught_its_sub_step_s_failure_replays_it_as_it_went_after_a_wait():
    """The sub-step's spent attempts were kept as soon as it failed: resumed after its
    wait, the step ran the sub-step anew, it succeeded, the fallback was skipped, and the
    wait's key moved: the person was asked again."""
    topic = f"t{time.time_ns()}"
    run = wf.falling_back.start({"topic": topic})
    wait_until(lambda: flowkit.get_run(run.id).waits, WAIT, "the step to ask")
    flowkit.send_input(run.id, "approve", True)
    wait_until(lambda: flowkit.get_run(run.id).state in ("succeeded", "waiting"), WAIT,
               "the run to go on")
    assert flowkit.get_run(run.id).output == {"text": "fallback!", "ok": True}
    assert wf.DRAFTS[topic] == 2  # replayed, not asked again
    assert [e.type for e in run.events()].count("run.waiting") == 1


def test_a_run_whose_sub_step_keys_a_later_release_made_fails_saying_to_finish_the_deploy(
        store):
    """A worker of the release before this one read ``attempts`` as no stamp at all and
    keyed such a run's calls on its step's flat count: a replay by a new worker asked its
    person again. This release refuses a stamp it does not know."""
    run = wf.drafting.start({"topic": f"t{time.time_ns()}"}, delay=3600)
    store.redis.hset(store.keys.run(run.id), "sub_step_keys", "by-the-moon")
    control.fire_due_timers(time.time() + 3601)
    done = run.wait(WAIT)
    assert done.state == "failed" and done.error["type"] == "ConfigError"
    assert "keys its sub-steps' calls as 'by-the-moon', which a later flowkit" in \
        done.error["message"]
    assert "finish the deploy" in done.error["message"]
    assert not any(key.count("/") > 1 for key in store.checkpoints(run.id))  # nothing made


def test_a_run_made_before_attempt_keys_replays_its_sub_step_s_calls_at_each_attempt(store):
    """Its checkpoints were written under the sub-step alike for every attempt: a run in
    flight at the upgrade reads them where it wrote them."""
    topic = f"t{time.time_ns()}"
    run = wf.drafting.start({"topic": topic}, delay=3600)
    store.redis.hset(store.keys.run(run.id), "sub_step_keys", "nested")  # an older release's
    control.fire_due_timers(time.time() + 3601)
    assert run.wait(WAIT).state == "failed"  # each attempt replayed draft 1
    assert wf.DRAFTS[topic] == 1
    assert not any("@" in key for key in store.checkpoints(run.id))


def test_a_sub_step_s_cache_answers_its_next_call_in_another_run():
    """``.cache()`` was ignored on a component called inside a step: it ran every time."""
    import uuid

    tag = uuid.uuid4().hex
    first = wf.sub_step_cached.start({"tag": tag}).result(WAIT)
    second = wf.sub_step_cached.start({"tag": tag}).result(WAIT)
    assert first == second  # the second run's call was answered from the cache
    assert int(get_store().redis.get(f"calls:cached_sub:{tag}")) == 1
    other = wf.sub_step_cached.start({"tag": tag + "-other"}).result(WAIT)
    assert other["tag"] == tag + "-other"  # another input: its own call


def test_what_a_timed_out_sub_step_calls_is_keyed_under_it_and_refused_once_it_timed_out():
    """Its thread ran on and took the step's next call numbers: the step's own searches
    were keyed after the research's, and a replay answered b with a1's output."""
    run = wf.sub_step_ran_on.start({})
    assert run.result(WAIT) == {"b": "b!", "c": "c!"}
    keys = set(get_store().checkpoints(run.id))
    step = "0:t.researches_then_searches"
    assert f"{step}/1:t.search" in keys and f"{step}/2:t.search" in keys
    assert f"{step}/0:t.research/0:t.search" in keys  # a1, before the timeout
    assert not any(k.startswith(f"{step}/0:t.research/1:") for k in keys)  # a2: refused
    assert get_store().checkpoint(run.id, f"{step}/1:t.search") == '"b!"'


def test_a_step_that_catches_its_sub_step_s_timeout_goes_on_without_it():
    run = wf.sub_step_caught.start({})
    assert run.result(WAIT) == {"fallback": True}
    assert [e.data["chunk"] for e in run.events() if e.type == "step.output"] == ["fell back"]


def test_a_run_cancelled_while_its_step_waits_to_retry_gets_no_next_attempt(caplog):
    """The cancel was checked before the backoff only: the next attempt (a side effect)
    ran up to a backoff's length (30 s at most) after the user cancelled."""
    caplog.set_level(logging.INFO, logger="flowkit.engine.executor")
    run = wf.backing_off.start({})
    wait_until(lambda: "step.retrying" in types(run), WAIT, "the first attempt to fail")
    flowkit.cancel(run.id)
    # the backoff (1.5 s) ends, then the step stops (the session's worker is in this process)
    wait_until(lambda: any(run.id in r.getMessage() and "stopped" in r.getMessage()
                           for r in caplog.records), WAIT, "the step to stop")
    assert counts(run) == {"always_fails": 1}


def test_a_run_cancelled_while_a_sub_step_waits_to_retry_gets_no_next_attempt(caplog):
    """Only a step's retries checked the run after their backoff: a sub-step's ran their
    every attempt after the cancel, each a side effect."""
    caplog.set_level(logging.INFO, logger="flowkit.engine.executor")
    run = wf.sub_step_backing_off.start({})
    wait_until(lambda: counts(run).get("always_fails") == 1, WAIT, "the first attempt")
    flowkit.cancel(run.id)
    # the backoff (1.5 s) ends, then the step stops (the session's worker is in this process)
    wait_until(lambda: any(run.id in r.getMessage() and "stopped" in r.getMessage()
                           for r in caplog.records), WAIT, "the step to stop")
    assert counts(run) == {"always_fails": 1}


def test_a_wait_is_never_retried_even_when_retry_on_names_base_exception():
    """The engine's pause signal was retried: the wait's step ran three times, spending
    its attempts, and the stream said step.retrying after run.waiting."""
    run = wf.patient_retries.start({})
    wait_until(lambda: run.refresh().state == "waiting", WAIT, "the run to wait")
    flowkit.send_input(run.id, "approval", "yes")
    assert run.result(WAIT) == {"answer": "yes"}
    assert "step.retrying" not in types(run)
    assert counts(run) == {"patient": 2}  # once to pause, once with the answer


def test_a_failed_run_is_not_retried_while_a_branch_of_it_still_runs():
    """One branch failed the run while the other still ran; a retry then ran that branch
    again beside itself, and the old attempt's output won."""
    run = wf.half_failed.start({"n": 1})
    reached_gate(run, "gated")
    wait_until(lambda: run.refresh().state == "failed", WAIT, "the other branch to fail the run")
    with pytest.raises(flowkit.InvalidState, match=r"failed, but its step 0\.0:t\.gated still "
                                                   r"runs \(attempt 1 on .+\): retry once it "
                                                   r"ends; its output is then kept"):
        flowkit.retry(run.id)
    open_gate(run, "gated")
    wait_until(lambda: not get_store().live_leases(run.id, time.time()), WAIT,
               "the branch to end")
    flowkit.retry(run.id)
    assert run.result(WAIT) == {"parts": [{"n": 101}, {"n": 1}]}
    assert counts(run) == {"gated": 1, "breaks": 2, "join": 1}


def test_a_branch_that_stopped_when_another_failed_the_run_lets_a_retry_go_at_once(caplog):
    """The branch saw the failure at its next event and stopped, but held its lease until
    it lapsed: a retry meanwhile said the step still ran."""
    caplog.set_level(logging.INFO, logger="flowkit.engine.executor")
    run = wf.half_failed_reporting.start({"n": 1})
    reached_gate(run, "gated")
    wait_until(lambda: run.refresh().state == "failed", WAIT, "the other branch to fail the run")
    open_gate(run, "gated")
    wait_until(lambda: any(run.id in r.getMessage() and "stopped" in r.getMessage()
                           for r in caplog.records), WAIT, "the branch to stop")
    assert get_store().leases_in_flight(run.id) == {}
    flowkit.retry(run.id)  # the lapse (2 s here) is not waited for
    assert reached_gate(run, "gated") == 2  # its second attempt, the retry's
    open_gate(run, "gated")
    assert run.result(WAIT) == {"parts": [{"n": 101}, {"n": 1}]}
    assert counts(run) == {"gated_then_reports": 2, "breaks": 2, "join": 1}


def test_a_run_resumed_on_a_worker_without_its_workflow_fails_saying_so():
    """A workflow renamed while a run of it waited: the resume task raised WorkflowNotFound
    (a traceback in the worker's log), and the run sat queued, saying nothing, until the
    reaper sent it again five minutes later."""
    from flowkit import workflow  # noqa: PLC0415

    vanishing = flowkit.Workflow("vanishing", [wf.breaks.retry(attempts=1)])
    run = vanishing.start({"n": 1})
    wait_until(lambda: run.refresh().state == "failed", WAIT, "the first failure")
    # as a worker whose code renamed it (the session's worker runs in this process); not
    # put back: the other tests' listings know no "vanishing"
    workflow._workflows.pop("vanishing")
    flowkit.retry(run.id)
    with pytest.raises(flowkit.StepError, match=r"this worker has no workflow 'vanishing', "
                                                r"which the run started with \(renamed or "
                                                r"removed since\?\); define it again and retry"):
        run.result(WAIT)
    assert run.refresh().error["type"] == "WorkflowNotFound"



def test_a_green_pool_s_own_timeout_and_greenlet_exit_are_let_through_not_made_step_errors():
    """gevent's pool enforces a hard time limit by raising its Timeout (a BaseException)
    into the task and catching it itself: made a ComponentExit, it was retried as a step
    error and the limit was defeated."""
    import gevent  # noqa: PLC0415

    from flowkit.engine.executor import _exits  # noqa: PLC0415

    assert not _exits(gevent.Timeout(1))
    assert not _exits(gevent.GreenletExit())
    assert _exits(SystemExit(2)) and _exits(wf.OwnSignal("stop"))


@flowkit.component(name="t.polite")
def polite(data: dict) -> dict:
    """Stops when its run is cancelled, as the README's cooperative steps do."""
    get_store().redis.rpush(f"polite:began:{flowkit.context().run_id}", 1)
    while not flowkit.is_cancelled():
        time.sleep(0.02)  # the step's own pace of looking, not a test's synchronisation
    if data.get("raise"):
        raise RuntimeError("stopped by raising")
    return {"stopped": True}


polite_run = flowkit.Workflow("t.polite", [polite])


@flowkit.component(name="t.polite_outer")
def polite_outer(data: dict) -> dict:
    return polite.cache(60)(data)  # a sub-step


polite_cached = flowkit.Workflow("t.polite_cached", [polite.cache(60)])
polite_cached_within = flowkit.Workflow("t.polite_cached_within", [polite_outer])


@pytest.mark.parametrize("workflow", [polite_cached, polite_cached_within],
                         ids=["step", "sub-step"])
def test_what_an_attempt_returns_after_its_run_was_cancelled_is_not_cached(workflow):
    """Returned early once is_cancelled() said so, its partial output was cached on its way
    to the completion the run refused: every later run of that input got it, cached."""
    store = get_store()

    def cancelled(run: flowkit.Run) -> None:
        flowkit.cancel(run.id)
        # its trace goes out after the cache's write, when there was one
        wait_until(lambda: [s["status"] for s in control.trace(run.id)
                            if s.get("kind") == "step"] == ["cancelled"], WAIT,
                   "the attempt traced cancelled")

    first = workflow.start({"n": 7})
    assert store.redis.blpop(f"polite:began:{first.id}", timeout=WAIT) is not None
    cancelled(first)
    second = workflow.start({"n": 7})
    assert store.redis.blpop(f"polite:began:{second.id}", timeout=WAIT) is not None, \
        f"the second run was answered from the cache: {second.wait(WAIT).output}"
    cancelled(second)


def test_an_attempt_that_returns_after_its_run_was_cancelled_is_not_recorded_as_a_success():
    """The attempt returned normally once is_cancelled() said so: its span said ok and the
    metrics counted it a success (outcome "ok", with its duration in the step p95)."""
    seen: list = []
    hook = lambda ctx, value, output, error, duration: seen.append((ctx.step, output, error))  # noqa: E731
    flowkit.hooks.attempt_finished.append(hook)
    try:
        run = polite_run.start({})
        assert get_store().redis.blpop(f"polite:began:{run.id}", timeout=WAIT) is not None
        flowkit.cancel(run.id)
        wait_until(lambda: seen, WAIT, "the attempt to end")
    finally:
        flowkit.hooks.attempt_finished.remove(hook)
    [(step, output, error)] = seen
    assert output is None and isinstance(error, flowkit.RunCancelled)
    assert "returned after its run was cancelled" in str(error)
    from flowkit.metrics.listeners import outcome
    assert outcome(error) == "stopped"
    wait_until(lambda: [s["status"] for s in control.trace(run.id) if s.get("kind") == "step"]
               == ["cancelled"], WAIT, "the attempt traced cancelled")
    assert run.wait(WAIT).state == "cancelled"


def test_an_attempt_that_returns_after_its_run_was_restarted_is_traced_superseded():
    """A frozen worker's attempt, restarted elsewhere meanwhile, that saw it and returned
    closed its span ok beside the new attempt's: two successes of one step."""
    from flowkit.engine.drain import hand_over

    ended: list = []
    hook = lambda ctx, value, output, error, duration: ended.append((ctx.attempt, error))  # noqa: E731
    flowkit.hooks.attempt_finished.append(hook)
    store = get_store()
    try:
        run = polite_run.start({})
        assert store.redis.blpop(f"polite:began:{run.id}", timeout=WAIT) is not None
        [(step, token)] = [(s, lease["token"]) for r, s, lease in store.leases() if r == run.id]
        assert hand_over([(run.id, step, token)], "a test's handover") == [run.id]
        assert store.redis.blpop(f"polite:began:{run.id}", timeout=WAIT) is not None
        wait_until(lambda: ended, WAIT, "the first attempt to end")
        flowkit.cancel(run.id)
        assert run.wait(WAIT).state == "cancelled"
        wait_until(lambda: len(ended) == 2, WAIT, "the second attempt to end")
    finally:
        flowkit.hooks.attempt_finished.remove(hook)
    assert ended[0][0] == 1 and "returned after its run was restarted" in str(ended[0][1])
    def statuses() -> dict:
        return {s["attempt"]: s["status"] for s in control.trace(run.id) if s.get("kind") == "step"}

    wait_until(lambda: statuses() == {1: "superseded", 2: "cancelled"}, WAIT,
               "attempt 1 traced superseded and attempt 2 cancelled")


def test_an_attempt_that_raises_after_a_handover_logs_no_failure_of_its_run(caplog):
    """A drained worker's attempt, handed over, that raised as it stopped logged "run ...
    failed at step ..." with a traceback for a run that went on (alerts on every deploy)."""
    from flowkit.engine.drain import hand_over

    store = get_store()
    run = polite_run.start({"raise": True})
    assert store.redis.blpop(f"polite:began:{run.id}", timeout=WAIT) is not None
    [(step, token)] = [(s, lease["token"]) for r, s, lease in store.leases() if r == run.id]
    with caplog.at_level(logging.INFO, logger="flowkit.engine.executor"):
        assert hand_over([(run.id, step, token)], "a test's handover") == [run.id]
        assert store.redis.blpop(f"polite:began:{run.id}", timeout=WAIT) is not None
        wait_until(lambda: "after its run had moved on" in caplog.text, WAIT,
                   "the first attempt to end")
    assert "failed at step" not in caplog.text
    assert flowkit.get_run(run.id).state == "running"  # the second attempt goes on
    flowkit.cancel(run.id)


@flowkit.component(name="t.negate")
def negate(data: dict) -> dict:
    return {"n": -data["n"]}


#: A parallel block as a branch of another, and a branch that ends in one.
nested_blocks = flowkit.Workflow("t.nested_blocks", [
    wf.add_one, flowkit.parallel(wf.add_one, flowkit.parallel(wf.add_one, negate))])
branch_ending_in_a_block = flowkit.Workflow("t.branch_ending_in_a_block", [
    wf.add_one, flowkit.parallel(wf.add_one, [wf.double, flowkit.parallel(wf.add_one, negate)])])


def test_a_parallel_block_inside_another_joins_as_a_list_of_its_own():
    """Celery flattened a group inside a group: [6, -5, 6] (in the order the steps ended)
    for [6, [6, -5]]."""
    assert nested_blocks.start({"n": 4}).result(WAIT) == [{"n": 6}, [{"n": 6}, {"n": -5}]]


def test_a_branch_that_ends_in_a_parallel_block_joins():
    """The join waited, with no bound, for a result no step stores: the run stayed running
    and the worker thread that completed the last step was blocked for good (SIGTERM no
    longer stopped the worker)."""
    run = branch_ending_in_a_block.start({"n": 4})
    assert run.result(WAIT) == [{"n": 6}, [{"n": 11}, {"n": -10}]]
