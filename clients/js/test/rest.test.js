// Starting, answering, cancelling and reading runs over REST with the client,
// against the real server; the watch shows each change.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { FlowkitError, isTerminal } from "../src/index.js";
import { SKIP, closeWatches, client, until } from "./helpers.js";

afterEach(closeWatches);

test("start, then answer the run's input with its run token: the run goes on and succeeds", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("approval", { n: 7 });
  assert.ok(run.id && run.token);
  assert.equal(run.workflow, "approval");
  const page = client({ token: run.token });
  const watch = page.watch(run.id);
  const waiting = await until(watch, (s) => s.state === "waiting", "the wait for input");
  assert.equal(waiting.waiting.kind, "input");
  assert.equal(waiting.waiting.name, "approval");
  assert.equal(waiting.waiting.prompt, "Publish this?");
  const answered = await page.answer(run.id, "approval", { ok: true });
  assert.equal(answered.outcome, "resumed");
  const state = await until(watch, (s) => isTerminal(s) && s.connection === "closed", "the run's end");
  assert.equal(state.state, "succeeded");
  assert.equal(state.output.approved, true);
  assert.equal(state.waiting, null);
  assert.equal((await page.run(run.id)).state, "succeeded");
});

test("cancel a waiting run: the watch shows it cancelled and closes", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("approval", { n: 1 });
  const watch = api.watch(run.id, { token: run.token });
  await until(watch, (s) => s.state === "waiting", "the wait");
  const cancelled = await api.cancel(run.id);
  assert.equal(cancelled.state, "cancelled");
  const state = await until(watch, (s) => s.connection === "closed", "the stream's end");
  assert.equal(state.state, "cancelled");
});

test("an idempotency key maps two starts to one run", { skip: SKIP }, async () => {
  const api = client();
  const key = `js-${Date.now()}-${Math.random()}`;
  const first = await api.start("simple", { n: 1 }, { idempotencyKey: key, priority: 3 });
  const second = await api.start("simple", { n: 1 }, { idempotencyKey: key });
  assert.equal(second.id, first.id);
  assert.equal(first.created, true);
  assert.equal(second.created, false);
});

test("an empty idempotency key is sent and refused, not dropped into a keyless start", { skip: SKIP }, async () => {
  // dropped, each retry of a client whose key came out empty started another run
  const api = client();
  await assert.rejects(api.start("simple", { n: 1 }, { idempotencyKey: "" }), (error) => {
    assert.ok(error instanceof FlowkitError);
    assert.equal(error.status, 400);
    assert.ok(error.fields["Idempotency-Key"], JSON.stringify(error.fields));
    return true;
  });
});

test("a refusal is a FlowkitError with the API's status, code and field messages", { skip: SKIP }, async () => {
  const api = client();
  await assert.rejects(api.start("simple", {}), (error) => {
    assert.ok(error instanceof FlowkitError);
    assert.equal(error.status, 400);
    assert.equal(error.code, "validation_error");
    assert.ok(error.fields.n, JSON.stringify(error.fields));
    return true;
  });
  const page = client({ token: (await api.start("simple", { n: 1 })).token });
  await assert.rejects(page.cancel("some-other-run"), (error) => error.status === 403 || error.status === 404);
});

test("events() pages the history after a cursor", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("simple", { n: 1 });
  const watch = api.watch(run.id, { token: run.token });
  await until(watch, (s) => isTerminal(s) && s.connection === "closed", "the run's end");
  const all = await api.events(run.id);
  assert.equal(all.done, true);
  assert.equal(all.events.at(-1).type, "run.succeeded");
  const rest = await api.events(run.id, { after: all.events[0].id });
  assert.deepEqual(rest.events.map((e) => e.id), all.events.slice(1).map((e) => e.id));
});

test("a server that does not answer is a FlowkitError that says so, not a bare TypeError", async () => {
  const { FlowkitClient } = await import("../src/index.js");
  const api = new FlowkitClient({ baseUrl: "http://127.0.0.1:1/flowkit" }); // nothing listens there
  await assert.rejects(api.start("simple", { n: 1 }), (error) => {
    assert.ok(error instanceof FlowkitError, String(error));
    assert.equal(error.status, 0);
    assert.equal(error.code, "unreachable");
    assert.match(error.message, /^POST http:\/\/127\.0\.0\.1:1\/flowkit\/workflows\/simple\/runs: no answer from the server \(.+\): is it running, and is baseUrl right\?$/);
    assert.ok(error.cause instanceof TypeError);
    return true;
  });
});

test("items waiting under one name are answered each by its step; a resend is the same", { skip: SKIP }, async () => {
  // by name alone an answer went to whichever item Redis listed first
  const api = client();
  const run = await api.start("same_named_items", { n: 2 });
  const watch = api.watch(run.id, { token: run.token });
  const asking = await until(watch, (s) => s.waits.length === 2, "both items' waits");
  await assert.rejects(api.answer(run.id, "value", { value: 1 }), (error) => {
    assert.equal(error.status, 400);
    assert.deepEqual(Object.keys(error.fields), ["step"]);
    return true;
  });
  const byPrompt = Object.fromEntries(asking.waits.map((w) => [w.prompt, w.step]));
  for (const [prompt, value] of [["item 1?", 7], ["item 0?", 5]]) {
    const step = byPrompt[prompt];
    assert.equal((await api.answer(run.id, "value", { value }, { step })).outcome !== "same", true);
    assert.equal((await api.answer(run.id, "value", { value }, { step })).outcome, "same");
  }
  const state = await until(watch, (s) => isTerminal(s), "the run's end");
  assert.deepEqual(state.output, { total: 12 });
});
