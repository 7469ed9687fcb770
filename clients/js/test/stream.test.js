// Following real runs: history then live events, drops, refreshes, retries,
// superseded chunks and the SSE fallback, against the flowkit server the pytest
// wrapper serves (real worker, real Redis). Every assertion on delivery compares
// with the run's history read over REST: the same ids, in order, each once.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { FlowkitClient, isTerminal } from "../src/index.js";
import {
  SKIP, closeWatches, URL_, API_KEY, client, reachedGate, openGate, memoryStorage, until, historyIds, dropProxy, increasing, forgetRun,
} from "./helpers.js";

afterEach(closeWatches);

const done = (s) => isTerminal(s) && s.connection === "closed";

/** Start a run with the API key; watch it with its run token (as a page would). */
async function startAndWatch(workflow, input, watchOptions = {}, clientOptions = {}) {
  const api = client();
  const run = await api.start(workflow, input);
  const viewer = client({ token: run.token, ...clientOptions });
  const watch = viewer.watch(run.id, watchOptions);
  const events = [];
  watch.onEvent((e) => events.push(e));
  return { api, run, viewer, watch, events };
}

function streamerText(state) {
  return state.order.map((k) => state.steps[k].text).join("");
}

for (const transport of ["websocket", "sse"]) {
  test(`${transport}: the history comes first, then the live events, each once and in order`, { skip: SKIP }, async () => {
    const { api, run, watch, events } = await startAndWatch("streaming", { before: 3, after: 2 }, { transport });
    await reachedGate(run.id, "streamer");
    await until(watch, (s) => streamerText(s) === "a0a1a2", "the chunks written before the watch");
    assert.equal(watch.state.connection, "open");
    assert.equal(watch.transport, transport);
    await openGate(run.id, "streamer");
    const state = await until(watch, done, "the run's end");
    assert.equal(state.state, "succeeded");
    assert.deepEqual(state.output, { emitted: 5 });
    assert.equal(streamerText(state), "a0a1a2b0b1");
    assert.deepEqual(events.map((e) => e.id), await historyIds(api, run.id));
    assert.equal(state.lastEventId, events.at(-1).id);
    assert.equal(watch.connects, 1);
  });

  test(`${transport}: a run gone from Redis while followed ends the watch with a 404, no event made of it`, { skip: SKIP }, async () => {
    // SSE's `event: not_found` was handed on as a run event; a socket without a token,
    // closed with 4004, was reconnected to for ever
    const { run, watch, events } = await startAndWatch("streaming", { before: 1, after: 0 }, { transport });
    await reachedGate(run.id, "streamer");
    await until(watch, (s) => streamerText(s) === "a0" && s.connection === "open", "the first chunk");
    await forgetRun(run.id);
    const state = await until(watch, (s) => s.connection === "closed", "the watch to end");
    assert.equal(state.failure?.status, 404);
    assert.equal(state.failure?.code, "not_found");
    assert.ok(events.every((e) => typeof e.id === "string" && typeof e.type === "string"), JSON.stringify(events));
  });

  test(`${transport}: a dropped connection resumes from the last event, nothing lost or repeated`, { skip: SKIP }, async () => {
    const proxy = await dropProxy(URL_);
    try {
      const { api, run, watch, events } = await startAndWatch(
        "streaming", { before: 2, after: 3 }, { transport }, { baseUrl: proxy.url });
      await reachedGate(run.id, "streamer");
      await until(watch, (s) => streamerText(s) === "a0a1" && s.connection === "open", "the first chunks");
      const before = events.length;
      proxy.drop();
      await until(watch, (s) => s.connection === "reconnecting", "the watch noticing the drop");
      await openGate(run.id, "streamer"); // these events are written while the watch is away
      const state = await until(watch, done, "the run's end");
      assert.ok(watch.connects >= 2, `reconnected (connects=${watch.connects})`);
      assert.ok(events.length > before);
      assert.equal(streamerText(state), "a0a1b0b1b2");
      const ids = events.map((e) => e.id);
      assert.ok(increasing(ids), `in order, no duplicate: ${ids}`);
      assert.deepEqual(ids, await historyIds(api, run.id));
    } finally {
      await proxy.close();
    }
  });
}

test("watch.drop() cuts the connection like a network failure: the watch resumes by itself", { skip: SKIP }, async () => {
  const { api, run, watch, events } = await startAndWatch("streaming", { before: 1, after: 2 }, { transport: "sse" });
  await reachedGate(run.id, "streamer");
  await until(watch, (s) => streamerText(s) === "a0" && s.connection === "open", "the first chunk");
  watch.drop();
  assert.equal(watch.state.connection, "reconnecting");
  await openGate(run.id, "streamer");
  const state = await until(watch, done, "the run's end");
  assert.equal(watch.connects, 2);
  assert.equal(streamerText(state), "a0b0b1");
  assert.deepEqual(events.map((e) => e.id), await historyIds(api, run.id));
});

for (const transport of ["sse", "websocket"]) {
  // SSE: the server's ping comments stop too; WebSocket: the relay's pongs stop too
  test(`${transport}: a connection gone silent is reopened after idleTimeout`, { skip: SKIP }, async () => {
    const proxy = await dropProxy(URL_);
    try {
      const { api, run, watch, events } = await startAndWatch(
        "streaming", { before: 1, after: 2 }, { transport, idleTimeout: 1000 }, { baseUrl: proxy.url });
      await reachedGate(run.id, "streamer");
      await until(watch, (s) => streamerText(s) === "a0" && s.connection === "open", "the first chunk");
      proxy.freeze(); // a half-open connection: no reset, no more bytes
      await openGate(run.id, "streamer");
      const state = await until(watch, done, "the run's end over a new connection");
      assert.ok(watch.connects >= 2); // more if a slow worker left the first one silent too
      assert.equal(streamerText(state), "a0b0b1");
      assert.deepEqual(events.map((e) => e.id), await historyIds(api, run.id));
    } finally {
      await proxy.close();
    }
  });
}

test("websocket: an idle run keeps its connection, the relay's pongs proving it alive", { skip: SKIP }, async () => {
  const { run, watch } = await startAndWatch("streaming", { before: 1, after: 1 }, { transport: "websocket", idleTimeout: 1000 });
  await reachedGate(run.id, "streamer");
  await until(watch, (s) => streamerText(s) === "a0" && s.connection === "open", "the first chunk");
  // nothing is emitted while the step waits at its gate: three idle timeouts pass (1 s
  // each: a pause of the loaded test machine must not be taken for a dead socket)
  await new Promise((resolve) => setTimeout(resolve, 3000));
  assert.equal(watch.connects, 1, "no reconnect: every ping was answered");
  assert.equal(watch.state.connection, "open");
  await openGate(run.id, "streamer");
  const state = await until(watch, done, "the run's end");
  assert.equal(streamerText(state), "a0b0");
  assert.equal(watch.connects, 1);
});

test("a watch saves to storage at most once a second, and at once at the run's end", { skip: SKIP }, async () => {
  // once per event, the whole state each time: 6,000 events took 15.8 s against 2.7 s
  const storage = memoryStorage();
  let saves = 0;
  const counting = { ...storage, setItem: (k, v) => { saves += 1; storage.setItem(k, v); } };
  const { run, watch, events } = await startAndWatch("streaming", { before: 3, after: 3 }, { storage: counting });
  await reachedGate(run.id, "streamer");
  await openGate(run.id, "streamer");
  const state = await until(watch, done, "the run's end");
  assert.ok(events.length >= 10, `${events.length} events`);
  assert.ok(saves <= 3, `${saves} saves for ${events.length} events`);
  const saved = JSON.parse(storage.getItem(`flowkit.run.${run.id}`)).state;
  assert.equal(saved.lastEventId, state.lastEventId, "the end is saved at once");
});

test("a refresh (a new client from storage) resumes after the last event id, not from scratch", { skip: SKIP }, async () => {
  const storage = memoryStorage();
  const first = await startAndWatch("streaming", { before: 3, after: 2 }, { storage });
  await reachedGate(first.run.id, "streamer");
  await until(first.watch, (s) => streamerText(s) === "a0a1a2", "the chunks before the refresh");
  first.watch.close(); // the page goes away
  const seen = first.events.map((e) => e.id);
  await openGate(first.run.id, "streamer");

  const page = client({ token: first.run.token }); // the reloaded page: a new client, the same storage
  const watch = page.watch(first.run.id, { storage });
  assert.equal(streamerText(watch.state), "a0a1a2", "the folded state is there before any event");
  assert.equal(watch.state.lastEventId, seen.at(-1));
  const after = [];
  watch.onEvent((e) => after.push(e.id));
  const state = await until(watch, done, "the run's end after the refresh");
  assert.equal(streamerText(state), "a0a1a2b0b1");
  assert.ok(after.length > 0);
  const history = await historyIds(first.api, first.run.id);
  assert.deepEqual(after, history.slice(seen.length), "only the events after the last id");
  assert.deepEqual([...seen, ...after], history);
});

test("a failed run retried with client.retry shows the retried attempt and its success", { skip: SKIP }, async () => {
  const { api, run, watch, events } = await startAndWatch("exhausted", { n: 1, fail_times: 2 });
  let state = await until(watch, done, "the failure");
  assert.equal(state.state, "failed");
  const flaky = state.order.find((k) => k.endsWith("t.flaky"));
  assert.ok(flaky, `a flaky step in ${state.order}`);
  assert.equal(state.steps[flaky].status, "failed");
  assert.equal(state.error.step, flaky);
  const failedAttempts = state.steps[flaky].attempts;

  const retried = await api.retry(run.id); // a run token may not retry: the API key's client does
  assert.equal(retried.id, run.id);
  watch.reconnect(); // the page's watch (another client) follows the retried run from its last id
  state = await until(watch, (s) => s.state === "succeeded" && s.connection === "closed", "the retried run's success");
  assert.equal(state.steps[flaky].status, "completed");
  assert.ok(state.steps[flaky].attempts > failedAttempts, "a later attempt ran");
  assert.equal(state.error, null);
  assert.deepEqual(state.steps[flaky].output, { n: 2, calls: 3 });
  assert.equal(state.steps[flaky].text, "", "the failed attempts' partial output is not shown");
  assert.deepEqual(events.map((e) => e.id), await historyIds(api, run.id));
});

test("client.retry reopens the ended watches of the same client", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("exhausted", { n: 1, fail_times: 2 });
  const watch = api.watch(run.id);
  await until(watch, done, "the failure");
  await api.retry(run.id);
  const state = await until(watch, (s) => s.state === "succeeded" && s.connection === "closed", "the success");
  assert.equal(state.error, null);
});

test("chunks of superseded attempts are dropped from the folded output, yet delivered raw", { skip: SKIP }, async () => {
  const { watch, events } = await startAndWatch("retrying", { n: 1, fail_times: 2 });
  const state = await until(watch, done, "the run's end");
  assert.equal(state.state, "succeeded");
  const flaky = state.order.find((k) => k.endsWith("t.flaky"));
  const chunks = events.filter((e) => e.type === "step.output" && e.step === flaky).map((e) => e.chunk);
  assert.deepEqual(chunks, ["partial output of attempt 1", "partial output of attempt 2"]);
  assert.equal(state.steps[flaky].text, "");
  assert.deepEqual(state.steps[flaky].chunks, []);
  assert.equal(state.steps[flaky].attempts, 3);
  assert.equal(state.steps[flaky].status, "completed");
});

test("auto falls back to SSE when the WebSocket cannot open (an API key is no socket token)", { skip: SKIP }, async () => {
  const api = client(); // its token is the API key: the socket's ?token= refuses it, SSE's header takes it
  const run = await api.start("streaming", { before: 2, after: 1 });
  const watch = api.watch(run.id, { transport: "auto" });
  await reachedGate(run.id, "streamer");
  await until(watch, (s) => streamerText(s) === "a0a1", "the chunks over SSE");
  assert.equal(watch.transport, "sse");
  await openGate(run.id, "streamer");
  const state = await until(watch, done, "the run's end");
  assert.equal(streamerText(state), "a0a1b0");
});

test("auto: a socket that opened once is retried as a socket while the server is away, not left for SSE", { skip: SKIP }, async () => {
  const proxy = await dropProxy(URL_);
  try {
    const { api, run, watch, events } = await startAndWatch(
      "streaming", { before: 1, after: 2 }, { transport: "auto" }, { baseUrl: proxy.url });
    await reachedGate(run.id, "streamer");
    await until(watch, (s) => streamerText(s) === "a0" && s.connection === "open", "the first chunk");
    assert.equal(watch.transport, "websocket");
    proxy.refuse(true); // the server restarting: its connections reset, new ones refused
    proxy.drop();
    await proxy.refusals(3);
    proxy.refuse(false);
    await openGate(run.id, "streamer");
    const state = await until(watch, done, "the run's end");
    assert.equal(watch.transport, "websocket", "back on the WebSocket, not moved to SSE for good");
    assert.equal(streamerText(state), "a0b0b1");
    assert.deepEqual(events.map((e) => e.id), await historyIds(api, run.id));
  } finally {
    await proxy.close();
  }
});

test("websocket with an API key (the socket takes run tokens only) stops with a failure saying why", { skip: SKIP }, async () => {
  const api = client(); // its token is the API key
  const run = await api.start("simple", { n: 1 });
  const watch = api.watch(run.id, { transport: "websocket" });
  const state = await until(watch, (s) => s.connection === "closed", "the refusal");
  assert.equal(state.failure.status, 401);
  assert.match(state.failure.message, /Invalid API key or run token/);
  assert.match(state.failure.message, /run tokens only/);
  assert.equal(watch.failure, state.failure);
});

test("websocket without a token (credentials the server wants) stops with the server's 401, not reconnecting", { skip: SKIP }, async () => {
  // a page relying on a session the host app has ended: its socket was refused, and the
  // watch reconnected for ever (only a watch with a token was checked)
  const run = await client().start("simple", { n: 1 });
  const watch = client({ token: null }).watch(run.id, { transport: "websocket" });
  const state = await until(watch, (s) => s.connection === "closed", "the refusal");
  assert.equal(state.failure.status, 401);
  assert.match(state.failure.message, /Credentials required/);
  assert.doesNotMatch(state.failure.message, /run tokens only/);
});

test("an API key follows over the WebSocket with run tokens it makes (runToken)", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("simple", { n: 1 });
  const made = await api.runToken(run.id);
  assert.equal(made.run_id, run.id);
  assert.ok(made.token_expires_in > 0);
  const watch = client({ token: () => api.runToken(run.id).then((t) => t.token) }).watch(run.id, { transport: "websocket" });
  const state = await until(watch, done, "the run's end");
  assert.deepEqual(state.output, { n: 4 });
  assert.equal(watch.transport, "websocket");
});

test("a token function refused by the API (runToken of an unknown run) stops the watch with the 404", { skip: SKIP }, async () => {
  // the watch took it for a passing failure and retried the function for ever
  const api = client();
  const missing = "01M93X05HT2RHYGESAXCMYWMBZ";
  const watch = client({ token: () => api.runToken(missing).then((t) => t.token) }).watch(missing);
  const state = await until(watch, (s) => s.connection === "closed", "the refusal");
  assert.equal(state.failure.status, 404);
  assert.equal(state.failure.code, "not_found");
});

test("auto uses SSE at once where there is no WebSocket at all", { skip: SKIP }, async () => {
  const api = new FlowkitClient({ baseUrl: URL_, token: API_KEY, WebSocket: null });
  const run = await api.start("simple", { n: 1 });
  const watch = api.watch(run.id);
  assert.equal(watch.transport, "sse");
  const state = await until(watch, done, "the run's end");
  assert.deepEqual(state.output, { n: 4 });
});

test("a run token that is not valid stops the watch with the server's reason", { skip: SKIP }, async () => {
  const api = client();
  const run = await api.start("simple", { n: 1 });
  const watch = client({ token: "not-a-token" }).watch(run.id);
  const state = await until(watch, (s) => s.connection === "closed", "the refusal");
  assert.equal(state.failure.status, 401);
  assert.match(state.failure.message, /Invalid API key or run token/);
});

test("sse: a watch resumed from an ended run's last event closes at once, not reconnecting", { skip: SKIP }, async () => {
  // the server answers it 204 (a browser's EventSource stops on it); the watch took the
  // empty answer for a drop and reconnected for ever
  const { run, watch: first, events } = await startAndWatch("simple", { n: 1 }, { transport: "sse" });
  await until(first, done, "the run's end");
  first.close();
  const watch = client({ token: run.token }).watch(run.id, { transport: "sse", lastEventId: events.at(-1).id });
  const state = await until(watch, (s) => s.connection === "closed", "the watch to close");
  assert.equal(state.failure ?? null, null);
  assert.equal(watch.connects, 1);
});
