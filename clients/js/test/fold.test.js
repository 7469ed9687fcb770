// The fold alone, on event sequences shaped like flowkit's (the integration tests
// fold real streams): superseded chunks vanish, duplicates are ignored, waits and
// retries show as the dashboard draws them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { foldEvent, foldEvents, initialRunState, compareEventIds } from "../src/index.js";

const ev = (id, type, fields = {}) => ({ id, type, ts: Number(id.split("-")[0]) / 1000, run: "r1", ...fields });

test("chunks of an attempt later reported retrying are dropped, the next attempt's kept", () => {
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "run.queued", { workflow: "w" }),
    ev("2-0", "run.started"),
    ev("3-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("4-0", "step.output", { step: "0:a", attempt: 1, chunk: "bad " }),
    ev("5-0", "step.retrying", { step: "0:a", attempt: 1, error: { message: "x" } }),
    ev("6-0", "step.started", { step: "0:a", attempt: 2 }),
    ev("7-0", "step.output", { step: "0:a", attempt: 2, chunk: "good" }),
    ev("8-0", "step.completed", { step: "0:a", attempt: 2, output: { n: 1 }, tokens: { total: 5 } }),
    ev("9-0", "run.succeeded", { output: { n: 1 } }),
  ]);
  assert.equal(state.state, "succeeded");
  assert.equal(state.workflow, "w");
  assert.equal(state.steps["0:a"].text, "good");
  assert.deepEqual(state.steps["0:a"].chunks, ["good"]);
  assert.equal(state.steps["0:a"].attempts, 2);
  assert.equal(state.steps["0:a"].status, "completed");
  assert.deepEqual(state.output, { n: 1 });
  assert.deepEqual(state.tokens, { total: 5 });
  assert.equal(state.lastEventId, "9-0");
});

test("run.restarted drops the chunks of the attempts it lists", () => {
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("2-0", "step.output", { step: "0:a", attempt: 1, chunk: "lost" }),
    ev("3-0", "run.restarted", { reason: "lease lapsed", superseded: [{ step: "0:a", attempt: 1 }] }),
    ev("4-0", "step.started", { step: "0:a", attempt: 2 }),
    ev("5-0", "step.output", { step: "0:a", attempt: 2, chunk: "kept" }),
  ]);
  assert.equal(state.steps["0:a"].text, "kept");
  assert.equal(state.state, "queued");
});

test("a resumed attempt keeps the text of the attempt that paused; a failed one's is dropped", () => {
  // the step streamed a draft (an LLM call, checkpointed), paused for approval, and ran
  // again from its start: the draft is not streamed again, and vanished with its attempt
  const resumed = foldEvents(initialRunState("r1"), [
    ev("1-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("2-0", "step.output", { step: "0:a", attempt: 1, chunk: "Draft. " }),
    ev("3-0", "run.waiting", { step: "0:a", attempt: 1, kind: "input", name: "ok" }),
    ev("4-0", "run.resumed", { by: "input", name: "ok", step: "0:a" }),
    ev("5-0", "step.started", { step: "0:a", attempt: 2 }),
    ev("6-0", "step.output", { step: "0:a", attempt: 2, chunk: "Sent." }),
    ev("7-0", "step.failed", { step: "0:a", attempt: 2, error: { message: "x" } }),
    ev("8-0", "run.failed", { step: "0:a", error: { message: "x" } }),
  ]);
  assert.equal(resumed.steps["0:a"].text, "Draft. Sent.");
  // retried: the failed attempt's text goes, the paused one's stays
  const retried = foldEvents(resumed, [
    ev("9-0", "run.restarted", { reason: "retried", superseded: [] }),
    ev("10-0", "step.started", { step: "0:a", attempt: 3 }),
    ev("11-0", "step.output", { step: "0:a", attempt: 3, chunk: "Sent again." }),
  ]);
  assert.equal(retried.steps["0:a"].text, "Draft. Sent again.");
  assert.deepEqual(retried.paused, { "0:a#1": true });
  // a run.waiting that names no attempt (an older server's) keeps the older rule
  const older = foldEvents(initialRunState("r1"), [
    ev("1-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("2-0", "step.output", { step: "0:a", attempt: 1, chunk: "Draft. " }),
    ev("3-0", "run.waiting", { step: "0:a", kind: "input", name: "ok" }),
    ev("4-0", "step.started", { step: "0:a", attempt: 2 }),
    ev("5-0", "step.output", { step: "0:a", attempt: 2, chunk: "Draft. Sent." }),
  ]);
  assert.equal(older.steps["0:a"].text, "Draft. Sent.");
});

test("an event at or before the last id is ignored, and the input state is not changed", () => {
  const first = foldEvent(initialRunState("r1"), ev("5-1", "run.started"));
  const again = foldEvent(first, ev("5-1", "run.started"));
  const older = foldEvent(first, ev("5-0", "run.queued"));
  assert.equal(again, first);
  assert.equal(older, first);
  assert.equal(first.eventCount, 1);
  assert.equal(initialRunState("r1").eventCount, 0);
});

test("a wait for input marks the run and step waiting until resumed", () => {
  let state = foldEvents(initialRunState("r1"), [
    ev("1-0", "step.started", { step: "0:approve", attempt: 1 }),
    ev("2-0", "run.waiting", { step: "0:approve", kind: "input", name: "approval", prompt: "OK?" }),
  ]);
  assert.equal(state.state, "waiting");
  assert.equal(state.waiting.name, "approval");
  assert.equal(state.steps["0:approve"].status, "waiting");
  state = foldEvent(state, ev("3-0", "run.resumed", { by: "input", name: "approval" }));
  assert.equal(state.waiting, null);
  assert.equal(state.steps["0:approve"].status, "running");
});

test("a wait opened again after its answer was refused is told apart by the event that opened it", () => {
  // the dashboard redraws an answer form when a wait's `opened` changes: the same name,
  // state and step looked unchanged, and the form stayed "Answered." with Send disabled
  let state = foldEvents(initialRunState("r1"), [
    ev("1-0", "step.started", { step: "0:ask", attempt: 1 }),
    ev("2-0", "run.waiting", { step: "0:ask", kind: "input", name: "email" }),
  ]);
  assert.equal(state.waits[0].opened, "2-0");
  assert.equal(state.waits[0].refused, undefined);
  state = foldEvents(state, [
    ev("3-0", "run.resumed", { by: "input", name: "email" }),
    ev("4-0", "run.waiting", { step: "0:ask", kind: "input", name: "email",
      refused: { answer: { email: "x" }, errors: { email: ["Not a valid email address."] }, message: "refused" } }),
  ]);
  assert.equal(state.waits.length, 1);
  assert.equal(state.waits[0].opened, "4-0");
  assert.deepEqual(state.waits[0].refused.errors, { email: ["Not a valid email address."] });
});

test("ids compare as (milliseconds, sequence) numbers, not strings", () => {
  assert.ok(compareEventIds("10-0", "9-5") > 0);
  assert.ok(compareEventIds("9-10", "9-9") > 0);
  assert.equal(compareEventIds("18446744073709551615-1", "18446744073709551615-1"), 0);
  assert.ok(compareEventIds(null, "1-0") < 0);
});

test("a new attempt of a step supersedes its failed one (a retried run)", () => {
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "step.started", { step: "1:f", attempt: 2 }),
    ev("2-0", "step.output", { step: "1:f", attempt: 2, chunk: "half" }),
    ev("3-0", "step.failed", { step: "1:f", attempt: 2, error: { message: "boom" } }),
    ev("4-0", "run.failed", { step: "1:f", error: { message: "boom" } }),
  ]);
  assert.equal(state.steps["1:f"].text, "half", "the failed attempt's output stays while it is the last");
  assert.equal(state.error.step, "1:f");
  const retried = foldEvents(state, [
    ev("5-0", "run.restarted", { reason: "retry" }),
    ev("6-0", "step.started", { step: "1:f", attempt: 3 }),
    ev("7-0", "step.output", { step: "1:f", attempt: 3, chunk: "whole" }),
  ]);
  assert.equal(retried.steps["1:f"].text, "whole");
  assert.equal(retried.error, null);
  assert.equal(retried.state, "queued");
});

test("several waits open at once stay open until each is answered (fan-out items asking)", () => {
  const asks = [0, 1, 2].map((i) => ev(`${10 + i}-0`, "run.waiting", {
    step: `1:ask[${i}]`, kind: "input", name: `item-${i}`, prompt: null }));
  let state = foldEvents(initialRunState("r1"), [
    ev("1-0", "run.started"),
    ...[0, 1, 2].map((i) => ev(`${2 + i}-0`, "step.started", { step: `1:ask[${i}]`, attempt: 1 })),
    ...asks,
  ]);
  assert.deepEqual(state.waits.map((w) => w.name), ["item-0", "item-1", "item-2"]);
  // one answered: the run resumes, and the branches still asking pause again saying nothing
  state = foldEvents(state, [
    ev("20-0", "run.resumed", { by: "input", name: "item-2", step: "1:ask[2]" }),
    ev("21-0", "run.started"),
  ]);
  assert.deepEqual(state.waits.map((w) => w.name), ["item-0", "item-1"]);
  assert.equal(state.state, "waiting");  // it said "running", with nothing left to answer
  assert.equal(state.waiting.name, "item-1");
  assert.equal(state.steps["1:ask[0]"].status, "waiting");
  assert.equal(state.steps["1:ask[2]"].status, "running");
  state = foldEvents(state, [
    ev("22-0", "run.resumed", { by: "input", name: "item-0", step: "1:ask[0]" }),
    ev("23-0", "run.resumed", { by: "input", name: "item-1", step: "1:ask[1]" }),
  ]);
  assert.deepEqual(state.waits, []);
  assert.equal(state.state, "queued");
  assert.equal(state.waiting, null);
});

test("chunks of a sub-step attempt that failed and ran again in place are dropped, nested ones too", () => {
  const outer = "0:a/0:draft", inner = "0:a/0:draft/0:llm";
  const events = [
    ev("1-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("2-0", "step.output", { step: "0:a", attempt: 1, chunk: "Intro. " }),
    ev("3-0", "step.output", { step: "0:a", attempt: 1, chunk: "Outline. ", sub_steps: [`${outer}@1`] }),
    ev("4-0", "step.output", { step: "0:a", attempt: 1, chunk: "Half ", sub_steps: [`${outer}@1`, `${inner}@1`] }),
    ev("5-0", "sub_step.retrying", { step: "0:a", attempt: 1, sub_step: `${inner}@1`, error: "ConnectionError: cut off", delay: 0.01 }),
    ev("6-0", "step.output", { step: "0:a", attempt: 1, chunk: "Whole. ", sub_steps: [`${outer}@1`, `${inner}@2`] }),
    ev("7-0", "sub_step.retrying", { step: "0:a", attempt: 1, sub_step: `${outer}@1`, error: "ValueError: refused", delay: 0.01 }),
    ev("8-0", "step.output", { step: "0:a", attempt: 1, chunk: "Better. ", sub_steps: [`${outer}@2`] }),
    ev("9-0", "step.output", { step: "0:a", attempt: 1, chunk: "Done." }),
  ];
  const state = foldEvents(initialRunState("r1"), events);
  assert.equal(state.steps["0:a"].text, "Intro. Better. Done.");
  assert.deepEqual(state.steps["0:a"].chunks, ["Intro. ", "Better. ", "Done."]);
  assert.equal(state.steps["0:a"].status, "running");
  // folded in two halves (a page refreshed between), and a chunk arriving after its voiding
  const half = foldEvents(initialRunState("r1"), events.slice(0, 5));
  assert.equal(half.steps["0:a"].text, "Intro. Outline. ");
  const late = ev("5-1", "step.output", { step: "0:a", attempt: 1, chunk: "late ", sub_steps: [`${inner}@1`] });
  assert.equal(foldEvents(half, [late, ...events.slice(5)]).steps["0:a"].text, "Intro. Better. Done.");
  // a state saved before this field existed folds on
  const { supersededSubSteps, ...older } = foldEvents(initialRunState("r1"), events.slice(0, 4));
  assert.equal(foldEvents(older, events.slice(4)).steps["0:a"].text, "Intro. Better. Done.");
});

test("a long stream's text is appended chunk by chunk, a superseded attempt's still dropped", () => {
  const chunks = Array.from({ length: 3000 }, (_, i) => ev(`${100 + i}-0`, "step.output", {
    step: "0:a", attempt: 2, chunk: `w${i} ` }));
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("2-0", "step.output", { step: "0:a", attempt: 1, chunk: "lost " }),
    ev("3-0", "run.restarted", { superseded: [{ step: "0:a", attempt: 1 }] }),
    ev("4-0", "step.output", { step: "0:a", attempt: 1, chunk: "late " }),  // after its voiding
    ev("5-0", "step.started", { step: "0:a", attempt: 2 }),
    ...chunks,
  ]);
  assert.equal(state.steps["0:a"].text, chunks.map((e) => e.chunk).join(""));
  assert.equal(state.steps["0:a"].chunks.length, 3000);
  assert.equal(state.steps["0:a"].rawChunks.length, 3000);
});

test("appending a chunk is not a copy of the step's chunks: a long stream folds in linear time", () => {
  // concat copied chunks and rawChunks for every chunk: 40,000 chunks took 10 s, 60,000 about 23 s.
  // Four times the chunks take about four times as long when folding is linear, sixteen when it
  // is quadratic: a ratio, which this machine's speed (it drifts) does not change.
  function fold(n) {
    let state = foldEvent(initialRunState("r1"), ev("1-0", "step.started", { step: "0:a", attempt: 1 }));
    const started = performance.now();
    for (let i = 0; i < n; i += 1) {
      state = foldEvent(state, { id: `2-${i}`, type: "step.output", run: "r1", step: "0:a", attempt: 1, chunk: "0123456789" });
    }
    const took = performance.now() - started;
    assert.equal(state.steps["0:a"].chunks.length, n);
    assert.equal(state.steps["0:a"].text.length, n * 10);
    return took;
  }
  fold(15_000); // warm the JIT up
  // the fastest of three of each: one garbage collection, or a busy machine (the suite runs
  // beside it), in a single fold made the ratio 9.5 once
  const small = Math.min(fold(15_000), fold(15_000), fold(15_000));
  const large = Math.min(fold(60_000), fold(60_000), fold(60_000));
  assert.ok(large / small < 8, `15,000 chunks folded in ${Math.round(small)} ms, 60,000 in ${Math.round(large)} ms`);
});

test("states sharing a step's chunks never change: an older state folded again, a progress event, a saved copy", () => {
  const out = (id, chunk, attempt = 1) => ev(id, "step.output", { step: "0:a", attempt, chunk });
  const s1 = foldEvents(initialRunState("r1"), [ev("1-0", "step.started", { step: "0:a", attempt: 1 }), out("2-0", "a")]);
  const s2 = foldEvent(s1, out("3-0", "b"));
  const s2chunks = s2.steps["0:a"].chunks; // read before s2 is folded further
  const s3 = foldEvent(s1, out("3-1", "c")); // s1 again: another branch of the same log
  const s4 = foldEvent(s2, out("4-0", "d"));
  const s5 = foldEvent(s4, ev("5-0", "step.progress", { step: "0:a", message: "half", fraction: 0.5 }));
  const s6 = foldEvent(s5, out("6-0", { n: 1 }));
  const view = (s) => [s.steps["0:a"].chunks, s.steps["0:a"].rawChunks.map((c) => c.chunk), s.steps["0:a"].text];
  assert.deepEqual(view(s1), [["a"], ["a"], "a"]);
  assert.deepEqual(view(s2), [["a", "b"], ["a", "b"], "ab"]);
  assert.deepEqual(s2chunks, ["a", "b"]);
  assert.equal(s2.steps["0:a"].chunks, s2chunks, "read twice: the same array");
  assert.deepEqual(view(s3), [["a", "c"], ["a", "c"], "ac"]);
  assert.deepEqual(view(s4), [["a", "b", "d"], ["a", "b", "d"], "abd"]);
  assert.deepEqual(view(s6), [["a", "b", "d", { n: 1 }], ["a", "b", "d", { n: 1 }], 'abd{"n":1}']);
  assert.equal(s6.steps["0:a"].progress.message, "half");
  assert.deepEqual({ ...s6.steps["0:a"] }.chunks, ["a", "b", "d", { n: 1 }], "a spread copy has the chunks");
  // a state saved as JSON (the watch's storage) and restored folds on from where it was
  const restored = JSON.parse(JSON.stringify(s6));
  assert.deepEqual(restored, JSON.parse(JSON.stringify(s6)));
  assert.deepEqual(restored.steps["0:a"].chunks, ["a", "b", "d", { n: 1 }]);
  const s7 = foldEvents(restored, [out("7-0", "e"), out("8-0", "f")]);
  assert.deepEqual(view(s7), [["a", "b", "d", { n: 1 }, "e", "f"], ["a", "b", "d", { n: 1 }, "e", "f"], 'abd{"n":1}ef']);
  assert.deepEqual(restored.steps["0:a"].chunks, ["a", "b", "d", { n: 1 }], "the restored state is not changed");
  // a superseded attempt's chunks still vanish from a step whose chunks are a view
  const s8 = foldEvents(s6, [ev("9-0", "step.retrying", { step: "0:a", attempt: 1 }), ev("10-0", "step.started", { step: "0:a", attempt: 2 }), out("11-0", "z", 2)]);
  assert.deepEqual(view(s8), [["z"], ["z"], "z"]);
  assert.deepEqual(view(s6)[0], ["a", "b", "d", { n: 1 }]);
});

test("a cancelled run's open steps end cancelled, its finished ones stay as they were", () => {
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "run.started"),
    ev("2-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("3-0", "step.completed", { step: "0:a", attempt: 1, output: { n: 1 } }),
    ev("4-0", "step.started", { step: "1[0]:b", attempt: 1 }),
    ev("5-0", "step.progress", { step: "1[0]:b", attempt: 1, message: "tick 8" }),
    ev("6-0", "step.started", { step: "1[1]:b", attempt: 1 }),
    ev("7-0", "run.waiting", { kind: "input", name: "ok", step: "1[1]:b" }),
    ev("8-0", "run.cancelled", { reason: "by an operator" }),
  ]);
  assert.equal(state.state, "cancelled");
  assert.equal(state.steps["0:a"].status, "completed");
  for (const key of ["1[0]:b", "1[1]:b"]) {
    assert.equal(state.steps[key].status, "cancelled", key);
    assert.equal(state.steps[key].endedAt, 0.008);
    assert.equal(state.steps[key].waiting, false);
  }
});

test("a run failed by the reaper's give-up fails its step too (no step.failed came)", () => {
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "run.started"),
    ev("2-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("3-0", "run.failed", { step: "0:a", error: { type: "WorkerLost", message: "gave up after 3 restarts" } }),
  ]);
  assert.equal(state.steps["0:a"].status, "failed");
  assert.equal(state.steps["0:a"].error.type, "WorkerLost");
});

test("a run one branch failed stops the branches still open (no event of theirs comes)", () => {
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "run.started"),
    ev("2-0", "step.started", { step: "0.0:slow", attempt: 1 }),
    ev("3-0", "step.started", { step: "0.1:fails", attempt: 1 }),
    ev("4-0", "step.failed", { step: "0.1:fails", attempt: 1, error: { message: "boom" } }),
    ev("5-0", "run.failed", { step: "0.1:fails", error: { message: "boom" } }),
  ]);
  assert.equal(state.steps["0.1:fails"].status, "failed");
  assert.equal(state.steps["0.0:slow"].status, "cancelled");
  assert.equal(state.steps["0.0:slow"].endedAt, 0.005);
});

test("a run failed as a whole (no step named) ends its open steps failed", () => {
  const state = foldEvents(initialRunState("r1"), [
    ev("1-0", "run.started"),
    ev("2-0", "step.started", { step: "0:a", attempt: 1 }),
    ev("3-0", "run.waiting", { kind: "sleep", name: "sleep", step: "0:a" }),
    ev("4-0", "run.failed", { error: { type: "WorkflowError", message: "the steps of w version 1 changed" } }),
  ]);
  assert.equal(state.state, "failed");
  assert.equal(state.steps["0:a"].status, "failed");
});
