// A watch whose storage refuses its saves (sessionStorage's ~5 MB quota) goes on, and
// says so once. No server: a fake fetch serves the SSE stream.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FlowkitClient, storageKey, foldEvents, initialRunState } from "../src/index.js";
import { fakeServer, until, memoryStorage } from "./helpers.js";

test("a save the storage refuses is reported once with console.warn, and the watch goes on", async () => {
  const server = fakeServer();
  const full = {
    getItem: () => null,
    setItem: () => {
      throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
    },
  };
  const warned = [];
  const warn = console.warn;
  console.warn = (...args) => warned.push(args.join(" "));
  try {
    const watch = new FlowkitClient({ baseUrl: "http://flowkit.test", fetch: server.fetch }).watch("r1", { storage: full, transport: "sse" });
    await until(watch, (s) => s.connection === "open", "the stream");
    // a terminal event is saved at once: two of them, two refused saves
    server.send("r1", { id: "1-0", type: "run.failed", run: "r1", error: { message: "x" } });
    server.send("r1", { id: "2-0", type: "run.restarted", run: "r1" });
    server.send("r1", { id: "3-0", type: "run.failed", run: "r1", error: { message: "y" } });
    const state = await until(watch, (s) => s.eventCount === 3, "the three events");
    assert.equal(state.state, "failed");
    watch.close();
    assert.equal(warned.length, 1, `warned: ${JSON.stringify(warned)}`);
    assert.match(warned[0], /could not save run r1 to storage \(QuotaExceededError/);
  } finally {
    console.warn = warn;
  }
});

test("a watch saves each step's chunks once, not as text, chunks and rawChunks: a refresh shows the same run", async () => {
  const server = fakeServer();
  const storage = memoryStorage();
  const api = new FlowkitClient({ baseUrl: "http://flowkit.test", fetch: server.fetch });
  const watch = api.watch("r1", { storage, transport: "sse" });
  await until(watch, (s) => s.connection === "open", "the stream");
  const chunk = "x".repeat(49) + ",";
  server.send("r1", { id: "1-0", type: "step.started", run: "r1", step: "0:s", attempt: 1 });
  for (let i = 0; i < 2000; i += 1) server.send("r1", { id: `2-${i}`, type: "step.output", run: "r1", step: "0:s", attempt: 1, chunk });
  server.send("r1", { id: "3-0", type: "step.output", run: "r1", step: "0:s", attempt: 1, chunk: { n: 1 } });
  server.send("r1", { id: "4-0", type: "run.succeeded", run: "r1", output: { ok: true } }); // saved at once
  const state = await until(watch, (s) => s.state === "succeeded", "the run's end");
  watch.close();
  const text = state.steps["0:s"].text;
  assert.equal(text.length, 2000 * 50 + 7);
  const saved = storage.getItem(storageKey("r1"));
  // all three made a save about 3.5 times the text (sessionStorage's 5 MB held 20,000 chunks of 50)
  assert.ok(saved.length < 1.6 * text.length, `saved ${saved.length} characters for ${text.length} of text`);

  const again = new FlowkitClient({ baseUrl: "http://flowkit.test", fetch: server.fetch }).watch("r1", { storage, transport: "sse" });
  try {
    const step = again.state.steps["0:s"];
    assert.equal(step.text, text);
    assert.deepEqual(step.chunks, state.steps["0:s"].chunks);
    assert.deepEqual(step.rawChunks, state.steps["0:s"].rawChunks);
    assert.equal(again.state.lastEventId, "4-0");
  } finally {
    again.close();
  }
});

test("a state saved whole (as before) is restored as it was", () => {
  const storage = memoryStorage();
  const whole = foldEvents(initialRunState("r2"), [
    { id: "1-0", type: "step.output", run: "r2", step: "0:s", attempt: 1, chunk: "a" },
    { id: "2-0", type: "step.output", run: "r2", step: "0:s", attempt: 1, chunk: "b" },
  ]);
  storage.setItem(storageKey("r2"), JSON.stringify({ state: whole }));
  const watch = new FlowkitClient({ baseUrl: "http://flowkit.test", fetch: () => new Promise(() => {}) }).watch("r2", { storage, transport: "sse" });
  try {
    assert.equal(watch.state.steps["0:s"].text, "ab");
    assert.deepEqual(watch.state.steps["0:s"].chunks, ["a", "b"]);
  } finally {
    watch.close();
  }
});
