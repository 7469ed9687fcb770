// useRun against the real server: a component follows a run, goes away (a page
// refresh), and a new component with the same storage shows the run at once and
// resumes after its last event id instead of replaying it (GenSX's useWorkflow
// loses a run on refresh).
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import TestRenderer from "react-test-renderer";
import WebSocket from "ws";
import { useRun } from "../src/react.js";
import { SKIP, closeWatches, URL_, client, reachedGate, openGate, memoryStorage } from "./helpers.js";

const mounted = new Set();
afterEach(() => {
  for (const renderer of mounted) renderer.unmount(); // a failed test leaves no watch running
  mounted.clear();
  closeWatches();
});

globalThis.IS_REACT_ACT_ENVIRONMENT = false; // updates come from the stream, outside act()

/** Renders useRun; `next(predicate)` resolves with the first rendered result that satisfies it.
 * `options` may be a function: called at each render, as a component writing them inline. */
function mount(runId, options) {
  const rendered = [];
  const waiters = [];
  function View() {
    const result = useRun(runId, typeof options === "function" ? options() : options);
    rendered.push(result);
    for (const w of [...waiters]) {
      if (w.predicate(result.state)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(result.state);
      }
    }
    return null;
  }
  const renderer = TestRenderer.create(createElement(View));
  mounted.add(renderer);
  return {
    rendered,
    next(predicate, what, timeout = 30_000) {
      const last = rendered.at(-1);
      if (last && predicate(last.state)) return Promise.resolve(last.state);
      return new Promise((resolve, reject) => {
        const w = { predicate, resolve };
        waiters.push(w);
        setTimeout(() => reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(rendered.at(-1)?.state)}`)), timeout).unref();
      });
    },
    unmount: () => {
      mounted.delete(renderer);
      renderer.unmount();
    },
  };
}

const text = (s) => s.order.map((k) => s.steps[k].text).join("");

test("useRun reattaches after a refresh: the saved state at once, then only the later events", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("streaming", { before: 2, after: 1 });
  const storage = memoryStorage();
  const options = { baseUrl: URL_, token: run.token, storage, WebSocket };
  const firstEvents = [];
  const first = mount(run.id, { ...options, onEvent: (e) => firstEvents.push(e.id) });
  await reachedGate(run.id, "streamer");
  await first.next((s) => text(s) === "a0a1", "the first chunks");
  first.unmount(); // the refresh
  await openGate(run.id, "streamer");

  const laterEvents = [];
  const second = mount(run.id, { ...options, onEvent: (e) => laterEvents.push(e.id) });
  await second.next(() => true, "the first render");
  const shownFirst = second.rendered[0].state;
  assert.equal(text(shownFirst), "a0a1", "the first render shows the saved run");
  assert.equal(shownFirst.lastEventId, firstEvents.at(-1));
  const state = await second.next((s) => s.state === "succeeded" && s.connection === "closed", "the run's end");
  assert.equal(text(state), "a0a1b0");
  assert.deepEqual([...firstEvents, ...laterEvents], (await api.events(run.id)).events.map((e) => e.id));
  second.unmount();
});

test("useRun's answer() reaches the run it follows", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("approval", { n: 2 });
  const view = mount(run.id, { baseUrl: URL_, token: run.token, storage: null, WebSocket });
  await view.next((s) => s.state === "waiting", "the wait");
  await view.rendered.at(-1).answer("approval", { ok: false });
  const state = await view.next((s) => s.state === "succeeded", "the run's end");
  assert.equal(state.output.approved, false);
  view.unmount();
});

test("useRun with a token function written inline keeps one watch across renders", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("streaming", { before: 2, after: 2 });
  let calls = 0;
  const view = mount(run.id, () => ({ baseUrl: URL_, storage: null, WebSocket, token: () => (calls += 1, run.token) }));
  await reachedGate(run.id, "streamer");
  await view.next((s) => text(s) === "a0a1", "the first chunks");
  await openGate(run.id, "streamer");
  const state = await view.next((s) => s.state === "succeeded" && s.connection === "closed", "the run's end");
  assert.equal(text(state), "a0a1b0b1");
  const watches = new Set(view.rendered.map((r) => r.watch).filter(Boolean));
  assert.ok(view.rendered.length > 4, `renders: ${view.rendered.length}`);
  assert.equal(watches.size, 1, "a new function each render must not make a new watch");
  assert.equal([...watches][0].connects, 1);
  assert.equal(calls, 1);
  view.unmount();
});

test("useRun with storage and fetch written inline keeps one watch across renders", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("streaming", { before: 2, after: 2 });
  const kept = memoryStorage();
  let fetches = 0;
  const view = mount(run.id, () => ({
    baseUrl: URL_, token: run.token, WebSocket,
    storage: { getItem: (k) => kept.getItem(k), setItem: (k, v) => kept.setItem(k, v) },  // a new object each render
    fetch: (...args) => (fetches += 1, globalThis.fetch(...args)),
  }));
  await reachedGate(run.id, "streamer");
  await view.next((s) => text(s) === "a0a1", "the first chunks");
  await openGate(run.id, "streamer");
  const state = await view.next((s) => s.state === "succeeded" && s.connection === "closed", "the run's end");
  assert.equal(text(state), "a0a1b0b1");
  const watches = new Set(view.rendered.map((r) => r.watch).filter(Boolean));
  assert.ok(view.rendered.length > 4, `renders: ${view.rendered.length}`);
  assert.equal(watches.size, 1, "a new storage or fetch each render must not make a new watch");
  assert.equal([...watches][0].connects, 1);
  assert.ok(kept.getItem(`flowkit.run.${run.id}`), "the inline storage was written to");
  await view.rendered.at(-1).cancel().catch(() => {});  // a REST call through the inline fetch
  assert.ok(fetches >= 1, "the latest inline fetch is the one called");
  view.unmount();
});
