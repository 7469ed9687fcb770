// A page following a run for longer than its run token lasts: the client's token
// function (the host app's route minting FlowKit.run_token) is called again when the
// server answers "token_expired", and the watch goes on without a reload. The server
// here signs tokens that last 1 s (FLOWKIT_SHORT_TOKENS_URL, served by the pytest wrapper).
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { isTerminal } from "../src/index.js";
import { SKIP, closeWatches, client, reachedGate, openGate, until, historyIds } from "./helpers.js";

afterEach(closeWatches);

const SHORT = process.env.FLOWKIT_SHORT_TOKENS_URL;
const skip = SKIP || (SHORT ? false : "needs the 1 s-token server: run through tests/js/test_js_client.py");
const done = (s) => isTerminal(s) && s.connection === "closed";

/** The host app's token route, counting its calls. */
function minter(runId) {
  const given = [];
  const mint = async () => {
    const response = await fetch(`${SHORT}/app/runs/${encodeURIComponent(runId)}/token`);
    assert.equal(response.status, 200);
    given.push(await response.text());
    return given.at(-1);
  };
  return { mint, given };
}

/** Resolves once the server refuses `token` as expired (the clock, not a guess, decides). */
async function expired(token, runId) {
  for (;;) {
    const response = await fetch(`${SHORT}/flowkit/runs/${encodeURIComponent(runId)}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (response.status === 401) {
      assert.equal((await response.json()).error.code, "token_expired");
      return;
    }
    assert.equal(response.status, 200);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

for (const transport of ["auto", "sse"]) {
  test(`${transport}: an expired run token is replaced by the token function and the watch goes on`, { skip }, async () => {
    const api = client();
    const run = await api.start("streaming", { before: 1, after: 2 });
    const { mint, given } = minter(run.id);
    const viewer = client({ baseUrl: `${SHORT}/flowkit`, token: mint });
    const watch = viewer.watch(run.id, { transport });
    const events = [];
    watch.onEvent((e) => events.push(e));
    await reachedGate(run.id, "streamer");
    await until(watch, (s) => Object.values(s.steps).map((x) => x.text).join("") === "a0" && s.connection === "open", "the first chunk");
    // The run waits at its gate and nothing drops the connection: the server ends the
    // stream when its token expires (WS close 4001, SSE "token_expired"), and the watch
    // asks the function for a fresh token and goes on from its last event.
    await until(watch, (s) => given.length >= 2 && s.connection === "open", "a stream on a fresh token");
    assert.equal(watch.state.state, "running");
    await openGate(run.id, "streamer");
    const state = await until(watch, done, "the run's end");
    assert.equal(state.state, "succeeded");
    assert.equal(watch.failure, null);
    assert.equal(new Set(given).size, given.length);
    assert.equal(watch.transport, transport === "auto" ? "websocket" : "sse");
    assert.deepEqual(events.map((e) => e.id), await historyIds(api, run.id));
  });
}

test("websocket: a socket refused for its expired token asks the token function for a fresh one", { skip }, async () => {
  const api = client();
  const run = await api.start("simple", { n: 1 });
  const { mint, given } = minter(run.id);
  await mint();
  await expired(given[0], run.id);
  let calls = 0;
  // the first answer is the token a page kept across a sleep: refused at the handshake
  const token = async () => (++calls === 1 ? given[0] : mint());
  const watch = client({ baseUrl: `${SHORT}/flowkit`, token }).watch(run.id, { transport: "websocket" });
  const state = await until(watch, done, "the run's end");
  assert.equal(state.state, "succeeded");
  assert.equal(watch.failure, null);
  assert.equal(calls, 2);
  assert.equal(watch.transport, "websocket");
});

test("a fixed run token's stream ends at its expiry with the server's reason", { skip }, async () => {
  const api = client();
  const run = await api.start("streaming", { before: 1, after: 1 });
  const { mint, given } = minter(run.id);
  await reachedGate(run.id, "streamer"); // first: the token's 1 s is the watch's, not the worker's
  await mint();
  const watch = client({ baseUrl: `${SHORT}/flowkit`, token: given[0] }).watch(run.id, { transport: "websocket" });
  const state = await until(watch, (s) => s.connection === "closed", "the end of the token");
  assert.equal(state.failure.status, 401);
  assert.match(state.failure.message, /token_expired/);
  assert.equal(state.state, "running"); // the run goes on; this token no longer reads it
  await openGate(run.id, "streamer");
});

test("a REST call with an expired token asks the token function once and is sent again", { skip }, async () => {
  const api = client();
  const run = await api.start("simple", { n: 1 });
  const { mint, given } = minter(run.id);
  const viewer = client({ baseUrl: `${SHORT}/flowkit`, token: mint });
  assert.equal((await viewer.run(run.id)).id, run.id);
  await expired(given[0], run.id);
  assert.equal((await viewer.run(run.id)).id, run.id);
  assert.equal(given.length, 2);
});

test("a token function that keeps giving expired tokens stops the watch with the server's reason", { skip }, async () => {
  const api = client();
  const run = await api.start("streaming", { before: 1, after: 1 });
  const { mint, given } = minter(run.id);
  await mint();
  await expired(given[0], run.id);
  const stale = given[0];
  let calls = 0;
  const watch = client({ baseUrl: `${SHORT}/flowkit`, token: () => (calls += 1, stale) }).watch(run.id, { transport: "sse" });
  const state = await until(watch, (s) => s.connection === "closed", "the refusal");
  assert.equal(state.failure.status, 401);
  assert.match(state.failure.message, /expired/);
  assert.equal(calls, 2); // the first token, then one fresh one: no loop
  await reachedGate(run.id, "streamer");
  await openGate(run.id, "streamer");
});
