// useRun with no server: a fake fetch serves each watch's SSE stream, and the test
// writes the events into it, so what the hook renders between them can be checked.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import TestRenderer from "react-test-renderer";
import { useRun } from "../src/react.js";
import { initialRunState, foldEvent, storageKey } from "../src/index.js";
import { memoryStorage, fakeServer } from "./helpers.js";

globalThis.IS_REACT_ACT_ENVIRONMENT = false; // updates come from the fake stream, outside act()

const mounted = new Set();
afterEach(() => {
  for (const renderer of mounted) renderer.unmount();
  mounted.clear();
});

/** Renders useRun(props.runId, options(props)); `next(predicate)` resolves with the first
 * rendered result (from now on, or the last one) that satisfies it. */
function mount(props, options) {
  const rendered = [];
  const waiters = [];
  function View(p) {
    const result = useRun(p.runId, options(p));
    const record = { props: p, ...result };
    rendered.push(record);
    for (const w of [...waiters]) {
      if (w.predicate(record)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(record);
      }
    }
    return null;
  }
  const renderer = TestRenderer.create(createElement(View, props));
  mounted.add(renderer);
  return {
    rendered,
    update: (next) => renderer.update(createElement(View, next)),
    next(predicate, what) {
      const last = rendered.at(-1);
      if (last && predicate(last)) return Promise.resolve(last);
      return new Promise((resolve, reject) => {
        waiters.push({ predicate, resolve });
        setTimeout(() => reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(rendered.at(-1)?.state)}`)), 10_000).unref();
      });
    },
  };
}

const chunk = (run, n, text) => ({ id: `${n}-0`, type: "step.output", run, step: "0:s", attempt: 1, chunk: text });

test("useRun never renders one run's state under another runId", async () => {
  const server = fakeServer();
  const storage = memoryStorage();
  const saved = foldEvent(initialRunState("B"), chunk("B", 1, "saved-b"));
  storage.setItem(storageKey("B"), JSON.stringify({ state: saved }));
  const view = mount({ runId: "A" }, (p) => ({ baseUrl: "http://flowkit.test", storage, fetch: server.fetch, transport: "sse" }));
  await view.next((r) => r.state.connection === "open", "A's stream");
  server.send("A", chunk("A", 1, "a-text"));
  await view.next((r) => r.state.steps["0:s"]?.text === "a-text", "A's chunk");
  const from = view.rendered.length;
  view.update({ runId: "B" });
  await view.next((r) => r.props.runId === "B" && r.state.connection === "open", "B's stream");
  const afterSwitch = view.rendered.slice(from);
  assert.ok(afterSwitch.length > 0);
  for (const r of afterSwitch) {
    assert.equal(r.state.runId, "B", `a render for B showed run ${r.state.runId}'s state`);
    assert.equal(r.state.steps["0:s"]?.text, "saved-b", "B's saved state from the first render on");
    assert.ok(r.watch === null || r.watch.runId === "B", `a render for B gave run ${r.watch?.runId}'s watch`);
  }
  // and with nothing saved for the next run: its empty state, not B's
  view.update({ runId: "C" });
  await view.next((r) => r.props.runId === "C" && r.state.connection === "open", "C's stream");
  for (const r of view.rendered.filter((x) => x.props.runId === "C")) {
    assert.equal(r.state.runId, "C");
    assert.deepEqual(r.state.steps, {});
  }
});

test("useRun's first render shows a run a watch saved (each step's chunks saved once)", async () => {
  const server = fakeServer();
  const storage = memoryStorage();
  const first = mount({ runId: "A" }, () => ({ baseUrl: "http://flowkit.test", storage, fetch: server.fetch, transport: "sse" }));
  await first.next((r) => r.state.connection === "open", "the stream");
  server.send("A", chunk("A", 1, "one,"));
  server.send("A", chunk("A", 2, "two"));
  server.send("A", { id: "3-0", type: "run.succeeded", run: "A", output: null }); // saved at once
  await first.next((r) => r.state.state === "succeeded", "the run's end");
  assert.equal(JSON.parse(storage.getItem(storageKey("A"))).state.steps["0:s"].text, undefined, "the text is not saved twice");
  const second = mount({ runId: "A" }, () => ({ baseUrl: "http://flowkit.test", storage, fetch: server.fetch, transport: "sse" }));
  await second.next(() => true, "the first render");
  const shown = second.rendered[0].state;
  assert.equal(shown.steps["0:s"].text, "one,two");
  assert.deepEqual(shown.steps["0:s"].chunks, ["one,", "two"]);
});

test("useRun passes idleTimeout and backoff to its watch", async () => {
  const server = fakeServer();
  const view = mount({ runId: "A" }, () => ({
    baseUrl: "http://flowkit.test", storage: null, fetch: server.fetch, transport: "sse", idleTimeout: 0, backoff: { initial: 10, max: 20 },
  }));
  const { watch } = await view.next((r) => r.watch !== null, "the watch");
  assert.equal(watch.idleTimeout, 0);
  assert.deepEqual(watch.backoff, { initial: 10, max: 20 });
  await view.next((r) => r.state.connection === "open", "the stream");
  view.update({ runId: "A", again: true }); // a new backoff object each render: the same watch
  await view.next((r) => r.props.again, "the second render");
  assert.equal(new Set(view.rendered.map((r) => r.watch).filter(Boolean)).size, 1);
  assert.deepEqual(server.opened, ["A"], "one stream: an inline backoff does not reconnect");
});

test("useRun's inline onEvent is the latest render's function", async () => {
  const server = fakeServer();
  const seen = [];
  const view = mount({ runId: "A", label: "first" }, (p) => ({
    baseUrl: "http://flowkit.test", storage: null, fetch: server.fetch, transport: "sse", onEvent: (e) => seen.push([p.label, e.id]),
  }));
  await view.next((r) => r.state.connection === "open", "the stream");
  server.send("A", chunk("A", 1, "x"));
  await view.next((r) => r.state.eventCount === 1, "the first event");
  view.update({ runId: "A", label: "second" });
  await view.next((r) => r.props.label === "second", "the second render");
  server.send("A", chunk("A", 2, "y"));
  await view.next((r) => r.state.eventCount === 2, "the second event");
  assert.deepEqual(seen, [["first", "1-0"], ["second", "2-0"]]);
  assert.deepEqual(server.opened, ["A"], "one stream: a new onEvent does not reconnect");
});
