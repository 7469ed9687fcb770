"""Components and workflows used by the integration tests.

Side effects go to Redis (``count:<run>:<step>``) so tests can count executions
across worker processes.
"""

from __future__ import annotations

import contextlib
import time

from marshmallow import fields, validate

import flowkit
from flowkit import component, continue_with, fan_out, parallel
from flowkit.store import get_store


class Flaky(Exception):
    pass


def _redis():
    return get_store().redis


def count(name: str) -> int:
    ctx = flowkit.context()
    return _redis().incr(f"count:{ctx.run_id}:{name}")


def wait_for_gate(name: str, timeout: float = 30.0) -> None:
    """Block until the test opens ``gate:<run>:<name>`` (a list it pushes to)."""
    ctx = flowkit.context()
    _redis().rpush(f"waiting:{ctx.run_id}:{name}", ctx.attempt)
    if _redis().blpop(f"gate:{ctx.run_id}:{name}", timeout=timeout) is None:
        raise TimeoutError(f"gate {name} never opened")


@component(name="t.add_one")
def add_one(data: dict) -> dict:
    count("add_one")
    return {"n": data["n"] + 1}


@component(name="t.double")
def double(data: dict) -> dict:
    count("double")
    return {"n": data["n"] * 2}


@component(name="t.send-email: to/user")
def hyphenated(data: dict) -> dict:
    """A name that is no Python identifier: Celery's task must still be made from it."""
    return {"n": data["n"] + 1}


#: a lambda's default name, ``tests.workflows.<lambda>``, is no identifier either
anonymous = component(lambda data: {"n": data["n"] * 3})


@component(name="t.not_a_number")
def not_a_number(data: dict) -> dict:
    """Returns (or, with ``emit``, emits) a NaN: JSON has no such number. With ``clash``,
    an object with keys 1 and "1", which JSON writes as one."""
    if data.get("clash"):
        return {"by_id": {1: "int", "1": "str"}}
    if data.get("emit"):
        flowkit.emit({"score": float("inf")})
    return {"score": float("nan")}


@component(name="t.gated")
def gated(data: dict) -> dict:
    count("gated")
    wait_for_gate("gated")
    return {"n": data["n"] + 100}


@component(name="t.gated_then_reports")
def gated_then_reports(data: dict) -> dict:
    count("gated_then_reports")
    wait_for_gate("gated")
    flowkit.progress("past the gate")  # stops the step when its run ended meanwhile
    return {"n": data["n"] + 100}


@component(name="t.talker")
def talker(data: dict) -> dict:
    count("talker")
    for i, word in enumerate(["alpha", "beta", "gamma"]):
        flowkit.progress(f"word {i + 1}/3", fraction=(i + 1) / 3)
        flowkit.emit(word)
    return {"n": data["n"], "words": 3}


@component(name="t.paced")
def paced(data: dict) -> dict:
    """Half done at once, then half done after a second: only the second has a pace."""
    flowkit.progress("started", fraction=0.5)
    time.sleep(1.0)
    flowkit.progress("halfway", fraction=0.5)
    return data


@component(name="t.nested")
def nested(data: dict) -> list:
    """An output nested ``depth`` arrays deep (JSON takes it; a recursive walk may not)."""
    out: list = []
    for _ in range(data["depth"]):
        out = [out]
    return out


class OwnSignal(BaseException):
    """A BaseException of the component's own, as some libraries define."""


class UnreadableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


@component(name="t.misbehaves")
def misbehaves(data: dict) -> object:
    """Ends its step in the way ``data["how"]`` names, each one that escaped the engine."""
    count("misbehaves")
    how = data["how"]
    if how == "exit":
        raise SystemExit(2)  # as sys.exit(2) in a library
    if how == "interrupt":
        raise KeyboardInterrupt()
    if how == "own":
        raise OwnSignal("stop")
    if how == "surrogate-output":
        return "bad \ud800 text"
    if how == "surrogate-error":
        raise ValueError("bad \ud800 text")
    if how == "unreadable-error":
        raise UnreadableError()
    if how == "huge-error":
        raise ValueError("<html>" + "x" * 3_000_000 + "</html>")
    return data


@component(name="t.slow_sub")
def slow_sub(data: dict) -> dict:
    """A sub-step: slow in the first attempt of its step (which times out meanwhile)."""
    if data["attempt"] == 1:
        time.sleep(0.45)
    return {"made_by_attempt": data["attempt"]}


@component(name="t.times_out_once")
def times_out_once(data: dict) -> dict:
    """Attempt 1 times out inside its sub-step, which returns after the timeout."""
    return slow_sub({"attempt": flowkit.context().attempt})


@component(name="t.slow_first_call")
def slow_first_call(data: dict) -> dict:
    """A sub-step whose first call in a run outlasts its 0.5 s timeout, then tries to send
    (refused: that call timed out) and says it tried."""
    call = count("slow_first_call")
    if call == 1:
        time.sleep(1.0)
        try:
            flowkit.emit("late text of the call that timed out")
        finally:
            _redis().rpush(f"late:{flowkit.context().run_id}", "tried")
    return {"call": call}


@component(name="t.retries_slow_sub_step")
def retries_slow_sub_step(data: dict) -> dict:
    """Its sub-step's first attempt times out, its second answers; the step then waits for
    the first one's late send, so that the run's stream would show it."""
    out = slow_first_call.timeout(0.5).retry(
        attempts=2, backoff=flowkit.exponential(0.05, 0.05), jitter=False)(data)
    _redis().blpop(f"late:{flowkit.context().run_id}", timeout=10)
    flowkit.emit("the step goes on")
    return out


@component(name="t.search")
def search(query: str) -> str:
    return f"{query}!"


@component(name="t.research")
def research(data: dict) -> list:
    """Searches slowly: its 0.3 s timeout runs out after its first search; its thread runs
    on, and its next search is refused (it says so in ``refused:<run>``)."""
    found = []
    for query, pause in (("a1", 0.01), ("a2", 0.6)):
        time.sleep(pause)
        try:
            found.append(search(query))
        except flowkit.RunCancelled:
            _redis().rpush(f"refused:{flowkit.context().run_id}", query)
            raise
    return found


@component(name="t.researches_then_searches")
def researches_then_searches(data: dict) -> dict:
    """Its research times out; it then searches itself. Its searches' keys were taken by
    the research's thread running on: a replay answered b with a1's output."""
    with contextlib.suppress(flowkit.StepTimeout):
        research.timeout(0.3)(data)
    answers = {"b": search("b"), "c": search("c")}
    _redis().blpop(f"refused:{flowkit.context().run_id}", timeout=10)  # the thread's a2
    return answers


#: How often ``t.drafts`` answered each topic (the session worker runs in this process).
DRAFTS: dict[str, int] = {}
#: Topics whose ``t.drafts_until_valid`` fails once, after its sub-step.
FAIL_AFTER_DRAFTS: set[str] = set()


@component(name="t.drafts")
def drafts(topic: str) -> str:
    """An LLM's answer: another each time it is asked."""
    DRAFTS[topic] = DRAFTS.get(topic, 0) + 1
    return f"{topic} draft {DRAFTS[topic]}"


@component(name="t.validated")
def validated(topic: str) -> str:
    """Asks for a draft and refuses the first, as a check of an LLM's answer does."""
    answer = drafts(topic)
    if answer.endswith(" draft 1"):
        raise ValueError(f"refused {answer!r}")
    return answer


@component(name="t.drafts_until_valid")
def drafts_until_valid(data: dict) -> dict:
    retried = validated.retry(attempts=3, backoff=flowkit.exponential(0.01, 0.01), jitter=False)
    text = retried(data["topic"])
    if data["topic"] in FAIL_AFTER_DRAFTS:
        FAIL_AFTER_DRAFTS.discard(data["topic"])
        raise RuntimeError("the step fails after its sub-step")
    return {"text": text}


@component(name="t.strictly_validated")
def strictly_validated(topic: str) -> str:
    """Refuses the first three drafts: a sub-step retried 3 times fails its step."""
    answer = drafts(topic)
    if int(answer.rpartition(" ")[2]) < 4:
        raise ValueError(f"refused {answer!r}")
    return answer


@component(name="t.drafts_until_strictly_valid")
def drafts_until_strictly_valid(data: dict) -> dict:
    retried = strictly_validated.retry(attempts=3, backoff=flowkit.exponential(0.01, 0.01),
                                       jitter=False)
    return {"text": retried(data["topic"])}


@component(name="t.checks_or_falls_back_then_asks")
def checks_or_falls_back_then_asks(data: dict) -> dict:
    """Its check fails for good (drafts 1 and 2 refused) and it goes on with a fallback."""
    try:
        text = strictly_validated.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01),
                                        jitter=False)(data["topic"])
    except ValueError:
        text = search("fallback")
    return {"text": text, "ok": flowkit.wait_for_input("approve")}


@component(name="t.streams_a_draft")
def streams_a_draft(topic: str) -> str:
    """A sub-step that streams (as an LLM call does): replayed from its checkpoint, silent."""
    flowkit.emit("Draft. ")
    return f"draft of {topic}"


@component(name="t.streams_then_asks")
def streams_then_asks(data: dict) -> dict:
    """Streams, asks, streams, asks again and streams: each resume replays the step from its
    start. With ``fail_once``, the attempt after the first answer fails at its end; with
    ``timeout``, the first wait has that deadline."""
    flowkit.emit("Intro. ")
    text = streams_a_draft(data["topic"])
    ok = flowkit.wait_for_input("ok", timeout=data.get("timeout"))
    flowkit.emit("Sent.")
    if data.get("fail_once") and count("streams_then_asks:after") == 1:
        raise RuntimeError("the provider failed once, after the answer")
    final = flowkit.wait_for_input("final")
    flowkit.emit(" Done.")
    return {"text": text, "ok": ok, "final": final}


@component(name="t.half_then_whole")
def half_then_whole(topic: str) -> str:
    """A sub-step streaming its answer (as an LLM call does), cut off half-way the first
    time a run asks it."""
    flowkit.emit("Half ")
    if count("half_then_whole") == 1:
        raise ConnectionError("the stream was cut off")
    flowkit.emit("and whole. ")
    return f"answer on {topic}"


@component(name="t.outline_then_answer")
def outline_then_answer(topic: str) -> str:
    """A sub-step streaming an outline, then calling half_then_whole (which retries in
    place); it refuses its first answer, after it streamed."""
    flowkit.emit("Outline. ")
    answer = half_then_whole.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01),
                                   jitter=False)(topic)
    if count("outline_then_answer") == 1:
        raise ValueError("refused the first answer")
    return answer


@component(name="t.streams_around_retried_sub_steps")
def streams_around_retried_sub_steps(data: dict) -> dict:
    flowkit.emit("Intro. ")
    text = outline_then_answer.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01),
                                     jitter=False)(data["topic"])
    flowkit.emit("Done.")
    return {"text": text}


@component(name="t.says_its_key_once")
def says_its_key_once(key: str) -> str:
    """A sub-step whose first error shows the secret it was given (as a library's may)."""
    if count("says_its_key_once") == 1:
        raise PermissionError(f"key {key} refused")
    return "signed"


@component(name="t.signs_with_a_key")
def signs_with_a_key(data: dict) -> dict:
    signed = says_its_key_once.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01),
                                     jitter=False)(data["api_key"])
    return {"signed": signed}


@component(name="t.asks_inside")
def asks_inside(topic: str) -> bool:
    """A sub-step that streams, then waits: the step's pause point is inside it."""
    flowkit.emit("Asked. ")
    return flowkit.wait_for_input("ok")


@component(name="t.asks_in_a_sub_step")
def asks_in_a_sub_step(data: dict) -> dict:
    """Its sub-step waits; after it, the step streams, and fails once (its retry replays
    the sub-step from its checkpoint, never meeting the wait again)."""
    ok = asks_inside(data["topic"])
    flowkit.emit("Done.")
    if count("asks_in_a_sub_step:after") == 1:
        raise RuntimeError("fails once after its sub-step")
    return {"ok": ok}


@component(name="t.says_then_asks_item")
def says_then_asks_item(i: int) -> int:
    flowkit.emit(f"item {i}. ")
    answer = flowkit.wait_for_input(f"item-{i}", schema={"value": fields.Integer(required=True)})
    return answer["value"]


@component(name="t.fails_then_asks")
def fails_then_asks(data: dict) -> dict:
    """Fails once, then waits for input ``go``, then fails each time after the answer."""
    calls = count("fails_then_asks")
    if calls == 1:
        raise RuntimeError("the first call fails")
    flowkit.wait_for_input("go")
    raise RuntimeError(f"call {calls} fails after the answer")


@component(name="t.sleeps_until")
def sleeps_until(data: dict) -> dict:
    flowkit.sleep_until(data["wake"])
    return {"slept": True}


@component(name="t.asks_a")
def asks_a(data: dict) -> dict:
    return {"a": flowkit.wait_for_input("a")}


@component(name="t.works_then_asks_b")
def works_then_asks_b(data: dict) -> dict:
    if count("works_then_asks_b") == 1:  # its first run works until the test says
        wait_for_gate("works")
    return {"b": flowkit.wait_for_input("b")}


@component(name="t.both")
def both(parts: list) -> dict:
    return {**parts[0], **parts[1]}


@component(name="t.looks_up")
def looks_up(data: dict) -> list:
    """A sub-step that calls components itself."""
    return [search("x1"), search("x2")]


@component(name="t.looks_up_then_asks")
def looks_up_then_asks(data: dict) -> dict:
    """Replayed after its wait, its sub-step answers from its checkpoint without running:
    its two inner searches took the step's numbers the first time only, so the wait's key
    and the search after it moved (the person was asked again, for ever)."""
    found = looks_up(data)
    answer = flowkit.wait_for_input("approve")
    return {"found": found, "answer": answer, "b": search("b")}


@component(name="t.falls_back")
def falls_back(data: dict) -> dict:
    """Catches its sub-step's timeout and answers without it."""
    try:
        return slow_first_call.timeout(0.5)(data)
    except flowkit.StepTimeout:
        flowkit.emit("fell back")  # the step's own send: it was refused as abandoned
        return {"fallback": True}


@component(name="t.cached_sub")
def cached_sub(data: dict) -> dict:
    _redis().incr(f"calls:cached_sub:{data['tag']}")
    return {"tag": data["tag"], "made_at": time.time()}


@component(name="t.calls_cached_sub")
def calls_cached_sub(data: dict) -> dict:
    return cached_sub.cache(60)(data)


@component(name="t.retries_failing_sub_step")
def retries_failing_sub_step(data: dict) -> dict:
    return always_fails.retry(attempts=3, backoff=flowkit.exponential(1.5, 1.5),
                              jitter=False)(data)


@component(name="t.always_fails")
def always_fails(data: dict) -> dict:
    count("always_fails")
    raise Flaky("always")


@component(name="t.breaks")
def breaks(data: dict) -> dict:
    """Fails the first time it runs in a run, succeeds after (a retried run goes on)."""
    if count("breaks") == 1:
        raise RuntimeError("broken once")
    return {"n": data["n"]}


@component(name="t.patient")
def patient(data: dict) -> dict:
    count("patient")
    return {"answer": flowkit.wait_for_input("approval")}


@component(name="t.flaky")
def flaky(data: dict) -> dict:
    """Fails its first ``fail_times`` calls in this run (the run's input; 2 when absent:
    the step follows another, so ``data`` is that step's output, not the input)."""
    calls = count("flaky")
    if calls <= (flowkit.context().input or {}).get("fail_times", 2):
        flowkit.emit(f"partial output of attempt {calls}")
        raise Flaky(f"flaky failure {calls}")
    return {"n": data["n"], "calls": calls}


@component(name="t.switch")
def switch(data: dict) -> dict:
    """Fails while the test holds ``fail:<run>``."""
    count("switch")
    ctx = flowkit.context()
    if _redis().get(f"fail:{ctx.run_id}"):
        raise RuntimeError("switch is off")
    return data


@component(name="t.split")
def split(data: dict) -> list:
    count("split")
    return list(range(data["n"]))


@component(name="t.square")
def square(x: int) -> int:
    count(f"square{x}")
    return x * x


@component(name="t.total")
def total(values: list) -> dict:
    count("total")
    return {"total": sum(values)}


@component(name="t.left")
def left(data: dict) -> str:
    count("left")
    return f"L{data['n']}"


@component(name="t.right")
def right(data: dict) -> str:
    count("right")
    return f"R{data['n']}"


@component(name="t.join")
def join(parts: list) -> dict:
    count("join")
    return {"parts": parts}


@component(name="t.agent")
def agent(state: dict) -> object:
    """An agent loop: calls the tool until it has three observations, then answers."""
    count("agent")
    observations = state.get("observations", [])
    if len(observations) < 3:
        return continue_with(tool, {"observations": observations, "query": len(observations)})
    return {"answer": sum(observations)}


@component(name="t.tool")
def tool(state: dict) -> object:
    count("tool")
    observations = state["observations"] + [state["query"] * 10]
    return continue_with(agent, {"observations": observations})


@component(name="t.sleepy")
def sleepy(data: dict) -> dict:
    count("sleepy")
    time.sleep(data.get("sleep", 5))
    return data


@component(name="t.cached")
def cached(data: dict) -> dict:
    _redis().incr(f"cached-calls:{data['key']}")
    return {"key": data["key"], "value": data["key"].upper()}


@component(name="t.ctx_reader")
def ctx_reader(data: dict) -> dict:
    ctx = flowkit.context()
    return {"input": ctx.input, "first": ctx.output_of("t.add_one"), "step": ctx.step}


@component(name="t.sign_in")
def sign_in(data: dict) -> dict:
    return {"user": data["user"], "token": f"tok-{data['password']}-issued"}


@component(name="t.use_token")
def use_token(session: dict) -> dict:
    return {"user": session["user"], "token_length": len(session["token"])}


@component(name="t.with_inline")
def with_inline(data: dict) -> dict:
    count("with_inline")
    a = add_one(data)  # a durable sub-step inside this step
    wait_for_gate("with_inline")
    return double(a)



@component(name="t.meeting")
def meeting(x: int) -> int:
    """Waits at its gate: the items of a batch reach it together only if they run at once."""
    count(f"meeting{x}")
    wait_for_gate("meeting")
    return x + 1


@component(name="t.breaks_once")
def breaks_once(x: int) -> int:
    """Item 3 fails the first time it runs in a run, then works."""
    if count(f"item{x}") == 1 and x == 3:
        raise RuntimeError("item 3 breaks the first time")
    return x * 10


@component(name="t.hands_over")
def hands_over(x: int) -> object:
    return continue_with(square, x)


@component(name="t.record")
def record(data: dict) -> dict:
    """A side effect inside a step: checkpointed, so a replayed step does not repeat it."""
    count("record")
    return data


@component(name="t.approve")
def approve(data: dict) -> dict:
    """Asks a person, through wait_for_input; the step replays after the answer."""
    count("approve")
    record(data)
    decision = flowkit.wait_for_input(
        "approval", schema={"ok": fields.Boolean(required=True), "note": fields.String()},
        prompt="Publish this?", timeout=data.get("timeout"))
    return {**data, "approved": decision["ok"]}


@component(name="t.billing: charge/card")  # a name the README shows: ":" and "/" in it
def charge_card(data: dict) -> dict:
    return {**data, "charged": True}


@component(name="t.await_payment")
def await_payment(data: dict) -> dict:
    paid = flowkit.wait_for_event(data.get("key") or f"payment:{data['order']}",
                                  timeout=data.get("timeout"), lookback=data.get("lookback"))
    return {**data, "paid": paid}


@component(name="t.doze")
def doze(data: dict) -> dict:
    began = time.time()
    flowkit.sleep(data["seconds"])
    return {**data, "slept_from": data.get("slept_from", began)}


@component(name="t.ask_item")
def ask_item(i: int) -> int:
    answer = flowkit.wait_for_input(f"item-{i}", schema={"value": fields.Integer(required=True)})
    return answer["value"]


@component(name="t.value_each")
def value_each(i: int) -> int:
    """Every item waits under one name, as a component fanned out asks about each item."""
    return flowkit.wait_for_input("value", schema={"value": fields.Integer(required=True)},
                                  prompt=f"item {i}?")["value"]


@component(name="t.ask_item_briefly")
def ask_item_briefly(i: int) -> int:
    return flowkit.wait_for_input(f"item-{i}", schema={"value": fields.Integer(required=True)},
                                  timeout=60)["value"]


@component(name="t.branch_total")
def branch_total(outputs: list) -> dict:
    return {"outputs": outputs}


number_schema = {"n": fields.Integer(required=True), "fail_times": fields.Integer(load_default=2)}

chain3 = flowkit.Workflow("chain3", [add_one, gated, double], input_schema=number_schema)
simple = flowkit.Workflow("simple", [add_one, double], input_schema=number_schema)
oddly_named = flowkit.Workflow("oddly-named", [hyphenated, anonymous], input_schema=number_schema)
chatty = flowkit.Workflow("chatty", [talker], input_schema=number_schema)
pacing = flowkit.Workflow("pacing", [paced])
nesting = flowkit.Workflow("nesting", [nested])
not_numbers = flowkit.Workflow("not-numbers", [not_a_number])
misbehaving = flowkit.Workflow("misbehaving", [misbehaves])
half_failed = flowkit.Workflow("half-failed", [parallel(gated, breaks.retry(attempts=1)), join],
                               input_schema=number_schema)
# attempt 1 times out at 0.3 s, its sub-step returns at 0.45 s, attempt 2 begins at 0.6 s
# (its worst case, 0.9 s, stays under the 1.05 s test_engine's visibility check expects)
half_failed_reporting = flowkit.Workflow(
    "half-failed-reporting", [parallel(gated_then_reports, breaks.retry(attempts=1)), join])
abandoning = flowkit.Workflow("abandoning", [times_out_once.timeout(0.3).retry(
    attempts=2, backoff=flowkit.exponential(0.3, 0.3), jitter=False)])
sub_step_retried = flowkit.Workflow("sub-step-retried", [retries_slow_sub_step])
sub_step_cached = flowkit.Workflow("sub-step-cached", [calls_cached_sub])
sub_step_backing_off = flowkit.Workflow("sub-step-backing-off", [retries_failing_sub_step])
sub_step_caught = flowkit.Workflow("sub-step-caught", [falls_back])
sub_step_ran_on = flowkit.Workflow("sub-step-ran-on", [researches_then_searches])
sub_step_then_wait = flowkit.Workflow("sub-step-then-wait", [looks_up_then_asks])
drafting = flowkit.Workflow("drafting", [drafts_until_valid])
sleeping_and_asking = flowkit.Workflow("sleeping-and-asking",
                                       [parallel(sleeps_until, asks_a), both])
answered_while_working = flowkit.Workflow(
    "answered-while-working", [parallel(asks_a, works_then_asks_b), both])
drafting_strictly = flowkit.Workflow("drafting-strictly", [drafts_until_strictly_valid])
falling_back = flowkit.Workflow("falling-back", [checks_or_falls_back_then_asks])
backing_off = flowkit.Workflow("backing-off", [always_fails.retry(
    attempts=3, backoff=flowkit.exponential(1.5, 1.5), jitter=False)])
patient_retries = flowkit.Workflow("patient-retries", [patient.retry(
    attempts=3, retry_on=BaseException, backoff=flowkit.exponential(0.05, 0.05))])
retrying = flowkit.Workflow(
    "retrying",
    [add_one, flaky.retry(attempts=3, backoff=flowkit.exponential(0.1, 0.2), jitter=False), double],
    input_schema=number_schema,
)
@component(name="rocket")
def rocket(data: dict) -> dict:
    """Named as an emoji code is, with such codes in its text: a terminal's renderer made
    ``0:rocket: ...`` of its error line an emoji, and lost the step key."""
    flowkit.emit("launch :rocket: now\n")
    if data.get("fail"):
        raise ValueError("broke :fire: here")
    return {"said": "deploy:rocket: now"}


#: A run whose text and step key hold ``:name:`` emoji codes, to be shown as they are.
emoji_codes = flowkit.Workflow("emoji-codes", [rocket])

exhausted = flowkit.Workflow(
    "exhausted",
    [add_one, flaky.retry(attempts=2, backoff=flowkit.exponential(0.05, 0.1), jitter=False)],
    input_schema=number_schema,
)
resumable = flowkit.Workflow("resumable", [add_one, switch, double], input_schema=number_schema)
fanned = flowkit.Workflow("fanned", [split, fan_out(square), total], input_schema=number_schema)
batched = flowkit.Workflow("batched", [split, fan_out(square, batch=2), total],
                          input_schema=number_schema)
meeting_in_batches = flowkit.Workflow("meeting_in_batches", [split, fan_out(meeting, batch=3)],
                                      input_schema=number_schema)
breaking_in_batches = flowkit.Workflow("breaking_in_batches", [split, fan_out(breaks_once, batch=2)],
                                       input_schema=number_schema)
handing_over_in_batches = flowkit.Workflow("handing_over_in_batches",
                                           [split, fan_out(hands_over, batch=2)],
                                           input_schema=number_schema)
branches = flowkit.Workflow("branches", [add_one, parallel(left, [double, right]), join],
                            input_schema=number_schema)
#: Opens with a parallel block: its first message is a chord's, sent without the fused start.
opening_branches = flowkit.Workflow("opening_branches", [parallel(left, right), join],
                                    input_schema=number_schema)
looping = flowkit.Workflow("looping", [agent])
timing_out = flowkit.Workflow(
    "timing_out", [sleepy.timeout(0.5).retry(attempts=2, backoff=flowkit.exponential(0.05, 0.05))]
)
caching = flowkit.Workflow("caching", [cached.cache(ttl=60)])
caching_v2 = flowkit.Workflow("caching_v2", [cached.cache(ttl=60, version="2")])
inline = flowkit.Workflow("inline", [with_inline], input_schema=number_schema)
signing_in = flowkit.Workflow("signing_in", [sign_in.secret("token", "password"), use_token])
reading = flowkit.Workflow("reading", [add_one, ctx_reader], input_schema=number_schema)
approval = flowkit.Workflow("approval", [approve, record], input_schema={
    "n": fields.Integer(required=True), "timeout": fields.Float(allow_none=True)})
payment = flowkit.Workflow("payment", [await_payment])
charged_approval = flowkit.Workflow("charged_approval", [charge_card, approve])
dozing = flowkit.Workflow("dozing", [doze])
sub_step_asks = flowkit.Workflow("sub_step_asks", [
    asks_in_a_sub_step.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01), jitter=False)])
telling_items = flowkit.Workflow("telling_items", [split, fan_out(says_then_asks_item), total])
budgeted_asks = flowkit.Workflow("budgeted_asks", [
    fails_then_asks.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01), jitter=False)])
signing_with_a_key = flowkit.Workflow("signing_with_a_key",
                                      [signs_with_a_key.secret("api_key")])
retried_sub_steps = flowkit.Workflow("retried_sub_steps", [streams_around_retried_sub_steps])
streaming_asks = flowkit.Workflow("streaming_asks", [
    streams_then_asks.retry(attempts=2, backoff=flowkit.exponential(0.01, 0.01), jitter=False)])
waiting_branches = flowkit.Workflow("waiting_branches", [
    parallel(approve, [add_one, double]), branch_total])
waiting_items = flowkit.Workflow("waiting_items", [split, fan_out(ask_item), total])
same_named_items = flowkit.Workflow("same_named_items", [split, fan_out(value_each), total])
waiting_items_briefly = flowkit.Workflow("waiting_items_briefly",
                                         [split, fan_out(ask_item_briefly), total])
@component(name="t.tenant_work")
def tenant_work(data: dict) -> dict:
    """Says when it began and ended (the test checks at most `limit` overlap per tenant)."""
    ctx = flowkit.context()
    r = _redis()
    r.rpush(f"active:{data['tenant']}", f"+{ctx.run_id}")
    if data.get("gate"):
        wait_for_gate("tenant_work")
    if data.get("report"):  # an event: a cancelled run's step stops here (RunCancelled)
        try:
            flowkit.progress("past the gate")
        except flowkit.RunCancelled:
            r.rpush(f"active:{data['tenant']}", f"-{ctx.run_id}")
            raise
    time.sleep(data.get("pause", 0))
    r.rpush(f"active:{data['tenant']}", f"-{ctx.run_id}")
    return data


per_tenant = flowkit.Workflow(
    "per_tenant", [tenant_work], concurrency=flowkit.Concurrency(limit=2, key="tenant"))
#: The same, keyed by a function of the input (which raises on an input without "tenant").
per_tenant_fn = flowkit.Workflow(
    "per_tenant_fn", [tenant_work],
    concurrency=flowkit.Concurrency(limit=2, key=lambda data: data["tenant"]))


@component(name="t.fails_at_once")
def fails_at_once(data: dict) -> dict:
    """Fails the run once its sibling runs (a failed run starts no step)."""
    _redis().blpop(f"sibling-runs:{flowkit.context().run_id}", timeout=10)
    raise RuntimeError("this branch fails the run")


@component(name="t.gated_then_fails")
def gated_then_fails(data: dict) -> dict:
    """Still runs when its sibling fails the run; fails too once its gate opens."""
    _redis().rpush(f"sibling-runs:{flowkit.context().run_id}", 1)
    wait_for_gate("late_branch")
    raise RuntimeError("this branch fails after its run did")


failing_branches = flowkit.Workflow(
    "failing_branches", [parallel(fails_at_once.retry(attempts=1),
                                  gated_then_fails.retry(attempts=1))],
    concurrency=flowkit.Concurrency(limit=1, key="tenant"))


@component(name="t.scrape")
def scrape(data: dict) -> dict:
    """Marks its start and end per domain (at most `limit` may overlap), gated on request."""
    ctx = flowkit.context()
    _redis().rpush(f"active:{data['domain']}", f"+{ctx.run_id}")
    if data.get("gate"):
        wait_for_gate("scrape")
    _redis().rpush(f"active:{data['domain']}", f"-{ctx.run_id}")
    return data


one_per_domain = flowkit.Workflow("one_per_domain", [scrape.concurrency(1, key="domain")])
#: Also 10 starts at once, refilled at 2 an hour: the bucket's level counts the starts taken.
one_per_domain_rated = flowkit.Workflow("one_per_domain_rated", [
    scrape.concurrency(1, key="domain").rate_limit("2/h", key="domain", burst=10)])


@component(name="t.ping")
def ping(data: dict) -> dict:
    _redis().rpush(f"pinged:{data['user']}", time.time())
    return data


#: 6 a minute per user: a second ping within 10 s pauses on a timer.
rare_ping = flowkit.Workflow("rare_ping", [ping.rate_limit("6/m", key="user")])
#: Steps are cheap (100/s) but each costs `size` units of a 10-unit-a-second budget.
weighed_ping = flowkit.Workflow("weighed_ping", [
    ping.rate_limit("100/s", key="user", tokens="10/s", cost="size")])
#: Its step goes to a queue the session's worker does not consume.
LONELY = "lonely"
lonely = flowkit.Workflow("lonely", [add_one.queue(LONELY)], input_schema=number_schema)
#: Its first step on the default queue, its second on the lonely one: it runs, then strands.
stranded = flowkit.Workflow("stranded", [add_one, add_one.queue(LONELY)],
                            input_schema=number_schema)


# -- API plane (tests/api) ------------------------------------------------------


@component(name="t.streamer")
def streamer(data: dict) -> dict:
    """Emits ``before`` chunks, waits at its gate, then emits ``after`` chunks."""
    for i in range(data["before"]):
        flowkit.emit(f"a{i}")
    wait_for_gate("streamer")
    for i in range(data["after"]):
        flowkit.emit(f"b{i}")
    return {"emitted": data["before"] + data["after"]}


@component(name="t.bulky")
def bulky(data: dict) -> dict:
    """Emits ``chunks`` chunks of ``size`` characters: more than a socket's buffers hold."""
    for i in range(data["chunks"]):
        flowkit.emit(f"{i % 10}" * data["size"])
    return {"emitted": data["chunks"]}


@component(name="t.nap")
def nap(data: dict) -> dict:
    """Sleeps ``seconds``: a run that takes a few seconds, for synchronous invocation."""
    time.sleep(data["seconds"])
    return {"slept": data["seconds"]}


@component(name="t.slow_add")
def slow_add(data: dict) -> dict:
    """add_one that takes 0.2 s: longer than a worker's budget for running steps itself."""
    time.sleep(0.2)
    count("slow_add")
    return {"n": data["n"] + 1}


@component(name="t.echo")
def echo(data: dict) -> dict:
    """Passes its input through, as a step returning an LLM's JSON answer does."""
    return data


#: An echo of input that holds flowkit's continuation mark ("$continue"): it was taken for a
#: continue_with, running any registered component (or failing every resume: a hang).
echoing = flowkit.Workflow("echoing", [echo, add_one])

#: 20 quick steps back to back.
twenty = flowkit.Workflow("twenty", [add_one] * 20, input_schema=number_schema)
#: A slow step, then quick ones: the budget is spent before the second.
slow_first = flowkit.Workflow("slow_first", [slow_add, add_one, add_one],
                              input_schema=number_schema)
#: The middle step runs on another queue (the test's extra worker consumes it).
SIDE = "side"
#: Its output must be below 3: {"n": 1} gives 2 (accepted), {"n": 5} gives 6 (refused).
capped = flowkit.Workflow("capped", [add_one], input_schema=number_schema, output_schema={
    "n": fields.Integer(required=True, validate=validate.Range(max=2))})
crossing = flowkit.Workflow("crossing", [add_one, double.queue(SIDE), add_one],
                            input_schema=number_schema)
streaming = flowkit.Workflow(
    "streaming", [streamer],
    input_schema={"before": fields.Integer(load_default=5), "after": fields.Integer(load_default=5)},
)
bulky_output = flowkit.Workflow("bulky_output", [bulky])
napping = flowkit.Workflow(
    "napping", [nap], input_schema={"seconds": fields.Float(required=True)}
)
