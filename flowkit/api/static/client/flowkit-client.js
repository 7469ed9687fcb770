// flowkit browser client, one ESM file: built by scripts/build-js-client from
// clients/js/src (edit those, then run the script). No dependencies.
// ---- fold.js ----
// The run's picture, folded from its events. Pure (no I/O, no clock) so the
// dashboard, the watch and the tests all agree on what a stream of events means,
// and so a folded state saved to storage can be folded further after a refresh.
// Chunks of a superseded attempt (reported by step.retrying, listed in run.restarted's
// `superseded`, or an earlier attempt of a step that starts again, unless it paused: its
// run.waiting names it) are dropped: their text and chunks vanish from the step, even when
// the chunks were folded before the event that voids them. A resumed attempt does not send
// again the text it replays up to its wait, so the paused attempt's text stays the step's
// (flowkit.events.superseded_attempts keeps the same rule). A sub-step (a component called
// inside a step) retries in place, inside its step's attempt: its chunks name their sub-step
// attempts (`sub_steps`), and those of one a sub_step.retrying names are dropped too
// (flowkit.events.superseded_sub_steps).

/** Run states that end a run (a retry may still follow one). */
export const TERMINAL_STATES = ["succeeded", "failed", "cancelled"];

/**
 * The state before any event of a run.
 * @param {string} [runId]
 * @returns {import("../index").RunState}
 */
export function initialRunState(runId) {
  return {
    runId: runId ?? null,
    workflow: null,
    state: null,
    steps: {},
    order: [],
    output: null,
    error: null,
    waiting: null,
    waits: [],
    held: null,
    lastEventId: null,
    connection: "connecting",
    degraded: null,
    reconnectReason: null,
    tokens: {},
    cost: null,
    superseded: {},
    supersededSubSteps: {},
    paused: {},
    eventCount: 0,
  };
}

/**
 * Compare two stream ids ("<ms>-<seq>") as the server orders them.
 * @param {string|null|undefined} a
 * @param {string|null|undefined} b
 * @returns {number} negative, 0 or positive
 */
export function compareEventIds(a, b) {
  if (!a && !b) return 0;
  if (!a) return -1;
  if (!b) return 1;
  const [am, as = "0"] = String(a).split("-");
  const [bm, bs = "0"] = String(b).split("-");
  // BigInt: Redis ids are two 64-bit numbers, past Number's exact range
  const ms = BigInt(am) - BigInt(bm);
  if (ms !== 0n) return ms < 0n ? -1 : 1;
  const seq = BigInt(as) - BigInt(bs);
  return seq === 0n ? 0 : seq < 0n ? -1 : 1;
}

function attemptKey(step, attempt) {
  return `${step}#${attempt ?? 1}`;
}

function chunkText(chunk) {
  if (typeof chunk === "string") return chunk;
  if (chunk === undefined || chunk === null) return "";
  return JSON.stringify(chunk);
}

function newStep(key) {
  return {
    key,
    component: null,
    status: "pending",
    attempts: 0,
    output: null,
    text: "",
    chunks: [],
    rawChunks: [],
    progress: null,
    error: null,
    startedAt: null,
    endedAt: null,
    duration: null,
    tokens: null,
    waiting: false,
  };
}

// A step's chunks live in an append-only log shared by the states of one stream: a step
// sees the log's first `n` entries, and its `rawChunks` and `chunks` arrays are made from
// them when first read (then kept). A chunk appended where the log ends is pushed onto it
// (amortised O(1)); one appended to an older state, whose view does not end the log, copies
// that view first, so no state anyone holds ever changes. Copying both arrays for every
// chunk made a long stream quadratic to fold: 40,000 chunks took 10 s in Node.
const CHUNK_VIEWS = new WeakMap(); // step -> { log, n }

function viewChunks(step, log, n) {
  CHUNK_VIEWS.set(step, { log, n });
  let raw = null;
  let chunks = null;
  const assigned = (name) => (value) => {
    // set by hand, not by the fold: a plain property from now on, and no view
    CHUNK_VIEWS.delete(step);
    Object.defineProperty(step, name, { value, writable: true, enumerable: true, configurable: true });
  };
  return Object.defineProperties(step, {
    rawChunks: { enumerable: true, configurable: true, get: () => (raw ??= log.slice(0, n)), set: assigned("rawChunks") },
    chunks: { enumerable: true, configurable: true, get: () => (chunks ??= (raw ??= log.slice(0, n)).map((c) => c.chunk)), set: assigned("chunks") },
  });
}

// A new step: `step`'s fields with `changes`; its chunks stay a view of the same log
// (a spread would read them, making the arrays, for every event of the step).
function copyStep(step, changes) {
  const view = CHUNK_VIEWS.get(step);
  const copy = {};
  for (const key of Object.keys(step)) {
    if (view && (key === "rawChunks" || key === "chunks")) continue;
    copy[key] = step[key];
  }
  Object.assign(copy, changes);
  return view && !("rawChunks" in changes) ? viewChunks(copy, view.log, view.n) : copy;
}

// `step` with one more chunk (see CHUNK_VIEWS).
function appendChunk(step, entry, changes) {
  const view = CHUNK_VIEWS.get(step);
  let log;
  if (view && view.log.length === view.n) log = view.log; // the newest state: push
  else log = view ? view.log.slice(0, view.n) : [...(step.rawChunks ?? [])];
  log.push(entry);
  return viewChunks(copyStep(step, changes), log, log.length);
}

// Whether a chunk comes from a sub-step attempt that failed and ran again.
function ofFailedSubStep(subSteps, failed) {
  return Array.isArray(subSteps) && subSteps.some((s) => failed[s]);
}

// The text and chunks a step shows: those of attempts nobody superseded.
function visible(step, superseded, raw, failedSubSteps = {}) {
  const kept = raw.filter((c) => !superseded[attemptKey(step.key, c.attempt)] && !ofFailedSubStep(c.subSteps, failedSubSteps));
  return copyStep(step, { rawChunks: kept, chunks: kept.map((c) => c.chunk), text: kept.map((c) => chunkText(c.chunk)).join("") });
}

function withStep(state, key, change) {
  const known = state.steps[key];
  const step = known ?? newStep(key);
  const steps = { ...state.steps, [key]: change(step) };
  const order = known ? state.order : [...state.order, key];
  return { ...state, steps, order };
}

function dropAttempts(state, pairs) {
  if (!pairs.length) return state;
  const superseded = { ...state.superseded };
  for (const { step, attempt } of pairs) superseded[attemptKey(step, attempt)] = true;
  const steps = { ...state.steps };
  for (const { step } of pairs) {
    if (steps[step]) steps[step] = visible(steps[step], superseded, steps[step].rawChunks ?? [], state.supersededSubSteps);
  }
  return { ...state, superseded, steps };
}

function dropSubStep(state, key, failed) {
  if (typeof failed !== "string" || !failed) return state;
  const supersededSubSteps = { ...(state.supersededSubSteps ?? {}), [failed]: true };
  const steps = { ...state.steps };
  if (steps[key]) steps[key] = visible(steps[key], state.superseded, steps[key].rawChunks ?? [], supersededSubSteps);
  return { ...state, supersededSubSteps, steps };
}

function addTokens(total, used) {
  if (!used || typeof used !== "object") return total;
  const sum = { ...total };
  for (const [kind, n] of Object.entries(used)) {
    if (typeof n === "number") sum[kind] = (sum[kind] ?? 0) + n;
  }
  return sum;
}

// Steps whose wait ended: every waiting step but those of the waits still open.
function endWaits(steps, open = []) {
  const still = new Set(open.map((w) => w.step));
  const out = {};
  for (const [key, step] of Object.entries(steps)) {
    out[key] = step.status === "waiting" && !still.has(key) ? copyStep(step, { status: "running", waiting: false }) : step;
  }
  return out;
}

// The steps still open (running, retrying, waiting) as `status` from `ts` on: a cancelled
// run's steps are stopped by their workers without an event of their own, and its page
// showed them running for good.
function closeOpen(steps, status, ts) {
  const out = {};
  for (const [key, step] of Object.entries(steps)) {
    const open = step.status === "running" || step.status === "retrying" || step.status === "waiting";
    out[key] = open ? copyStep(step, { status, endedAt: ts, waiting: false }) : step;
  }
  return out;
}

// A wait's identity: several may be open at once (fan-out items each asking a person).
function sameWait(a, b) {
  return a.kind === b.kind && a.name === b.name && (a.step ?? null) === (b.step ?? null);
}

// The kind of wait a run.resumed's `by` answered.
const ANSWERED_KIND = { input: "input", event: "event", timer: "sleep", slot: "slot" };

// The waits a run.resumed leaves open: it names the one answered (its kind, its name, and
// its step when it has one); an event answers every wait on its key.
function openAfter(waits, event) {
  const kind = ANSWERED_KIND[event.by];
  if (!kind) return [];
  return waits.filter((w) => !(w.kind === kind
    && (event.name === undefined || event.name === null || w.name === event.name)
    && (!event.step || w.step === event.step)));
}

// The run's state while waits are open: what it waits for, not the re-run of the branches
// that pause again at once (they say nothing new).
function waitingOr(waits, state) {
  return waits.length ? "waiting" : state;
}

/**
 * Fold one event into a run state; returns a new state (the old one is not changed).
 * An event at or before `state.lastEventId` is returned unchanged: folding is idempotent
 * per event id, which is what makes delivery exactly-once across reconnects.
 * @param {import("../index").RunState} state
 * @param {import("../index").FlowkitEvent} event
 * @returns {import("../index").RunState}
 */
export function foldEvent(state, event) {
  if (!event || typeof event !== "object") return state;
  if (event.id && state.lastEventId && compareEventIds(event.id, state.lastEventId) <= 0) {
    return state;
  }
  let next = {
    ...state,
    runId: state.runId ?? event.run ?? null,
    lastEventId: event.id ?? state.lastEventId,
    eventCount: (state.eventCount ?? 0) + 1,
  };
  const ts = event.ts ?? null;
  const key = event.step;
  switch (event.type) {
    case "run.scheduled":
    case "run.queued":
      return { ...next, state: event.type.slice(4), workflow: event.workflow ?? next.workflow };
    case "run.held":
      return { ...next, state: "queued", held: event.reason ?? "held" };
    case "run.admitted":
      return { ...next, state: "queued", held: null };
    case "run.started": {
      const waits = next.waits ?? [];
      return { ...next, state: waitingOr(waits, "running"), held: null, steps: endWaits(next.steps, waits) };
    }
    case "run.waiting": {
      const { type, ts: _ts, run, id, ...fields } = event;
      // `opened`: the event that opened it; a wait opened again (its answer refused) is a new one
      const what = { ...fields, opened: id ?? null };
      const waits = [...(next.waits ?? []).filter((w) => !sameWait(w, what)), what];
      next = { ...next, state: "waiting", waiting: what, waits };
      // the attempt that paused keeps its text when the step runs again (see the top)
      if (key && event.attempt) next.paused = { ...(next.paused ?? {}), [attemptKey(key, event.attempt)]: true };
      const waitsForSomeone = event.kind !== "slot" && event.kind !== "sleep";
      if (key && next.steps[key] && waitsForSomeone) {
        next = withStep(next, key, (s) => copyStep(s, { status: "waiting", waiting: true }));
      }
      return next;
    }
    case "run.resumed": {
      const waits = openAfter(next.waits ?? [], event);
      return { ...next, state: waitingOr(waits, "queued"), waiting: waits.at(-1) ?? null, waits, steps: endWaits(next.steps, waits) };
    }
    case "run.restarted": {
      next = { ...next, state: "queued", waiting: null, waits: [], error: null, output: null };
      return dropAttempts(next, Array.isArray(event.superseded) ? event.superseded : []);
    }
    case "run.succeeded":
      return { ...next, state: "succeeded", output: event.output ?? null, waiting: null, waits: [], error: null };
    case "run.failed": {
      next = { ...next, state: "failed", error: { ...(event.error ?? {}), step: event.step ?? event.error?.step ?? null }, waiting: null, waits: [] };
      // the reaper's give-up fails the run without a step.failed: its step is failed too; a
      // failure of the whole run (its workflow's steps changed, a loop limit) names no step:
      // every open one ended with it
      if (!key) return { ...next, steps: closeOpen(next.steps, "failed", ts) };
      const open = next.steps[key] && ["running", "retrying", "waiting"].includes(next.steps[key].status);
      if (open) next = withStep(next, key, (s) => copyStep(s, { status: "failed", error: event.error ?? null, endedAt: ts, waiting: false }));
      // the other branches still open are stopped with the run (their end writes no event
      // once it failed): they showed running for good
      return { ...next, steps: closeOpen(next.steps, "cancelled", ts) };
    }
    case "run.cancelled":
      return { ...next, state: "cancelled", waiting: null, waits: [], steps: closeOpen(next.steps, "cancelled", ts) };
    case "step.started": {
      // a new attempt supersedes the step's earlier ones (e.g. the attempt that failed the
      // run, once the run is retried): their chunks are no longer the step's output; but
      // for those that paused, whose text the resumed attempt does not send again
      const attempt = event.attempt ?? 1;
      const earlier = Array.from({ length: attempt - 1 }, (_, i) => ({ step: key, attempt: i + 1 }));
      const paused = next.paused ?? {};
      next = dropAttempts(next, earlier.filter((p) => !next.superseded[attemptKey(p.step, p.attempt)]
        && !paused[attemptKey(p.step, p.attempt)]));
      return withStep(next, key, (s) => copyStep(s, {
        component: event.component ?? s.component,
        status: "running",
        attempts: Math.max(s.attempts, event.attempt ?? 1),
        error: null,
        waiting: false,
        startedAt: s.startedAt ?? ts,
        endedAt: null,
      }));
    }
    case "step.progress":
      return withStep(next, key, (s) => copyStep(s, {
        progress: { message: event.message ?? null, fraction: event.fraction ?? null, eta: event.eta ?? null },
      }));
    case "step.output":
      return withStep(next, key, (s) => {
        const status = s.status === "pending" ? "running" : s.status;
        const attempt = event.attempt ?? 1;
        // a chunk of an attempt superseded already is not the step's; the others append
        // (a rebuild of the whole text per chunk made a long stream quadratic to fold)
        const subSteps = Array.isArray(event.sub_steps) ? event.sub_steps : null;
        if (next.superseded[attemptKey(key, attempt)] || ofFailedSubStep(subSteps, next.supersededSubSteps ?? {})) return copyStep(s, { status });
        const entry = subSteps ? { attempt, chunk: event.chunk, subSteps } : { attempt, chunk: event.chunk };
        return appendChunk(s, entry, { status, text: (s.text ?? "") + chunkText(event.chunk) });
      });
    case "sub_step.retrying":
      return dropSubStep(next, key, event.sub_step);
    case "step.retrying":
      next = withStep(next, key, (s) => copyStep(s, { status: "retrying", error: event.error ?? null, attempts: Math.max(s.attempts, event.attempt ?? 1) }));
      return dropAttempts(next, [{ step: key, attempt: event.attempt }]);
    case "step.completed":
      next = withStep(next, key, (s) => copyStep(s, {
        status: "completed",
        output: event.output ?? null,
        error: null,
        waiting: false,
        endedAt: ts,
        duration: event.duration ?? null,
        tokens: event.tokens ?? null,
        attempts: Math.max(s.attempts, event.attempt ?? 1),
      }));
      next = { ...next, tokens: addTokens(next.tokens, event.tokens) };
      if (typeof event.cost === "number") next.cost = (next.cost ?? 0) + event.cost;
      return next;
    case "step.failed":
      return withStep(next, key, (s) => copyStep(s, { status: "failed", error: event.error ?? null, endedAt: ts, waiting: false }));
    default:
      return next; // a type this client does not know yet: counted, not drawn
  }
}

/**
 * A state as saved to storage: each step keeps its `rawChunks` only, as `text` and `chunks`
 * are made from them again by `unpackState` (with all three saved, a run took about 3.5
 * times its text, past sessionStorage's 5 MB at 20,000 chunks of 50 characters).
 * @param {import("../index").RunState} state
 */
export function packState(state) {
  const steps = {};
  for (const [key, step] of Object.entries(state.steps ?? {})) {
    const packed = {};
    for (const field of Object.keys(step)) if (field !== "text" && field !== "chunks") packed[field] = step[field];
    steps[key] = packed;
  }
  return { ...state, steps };
}

/**
 * A saved state (packed by `packState`, or a whole one as saved before) as the fold makes it.
 * @returns {import("../index").RunState}
 */
export function unpackState(saved) {
  const steps = {};
  for (const [key, step] of Object.entries(saved.steps ?? {})) {
    const raw = Array.isArray(step.rawChunks) ? step.rawChunks : [];
    steps[key] = typeof step.text === "string" && Array.isArray(step.chunks)
      ? step
      : { ...step, rawChunks: raw, chunks: raw.map((c) => c.chunk), text: raw.map((c) => chunkText(c.chunk)).join("") };
  }
  return { ...saved, steps };
}

/**
 * Fold many events (e.g. a REST history page) into a state.
 * @param {import("../index").RunState} state
 * @param {import("../index").FlowkitEvent[]} events
 */
export function foldEvents(state, events) {
  return events.reduce(foldEvent, state);
}

/** Whether a folded state is at a terminal run state. */
export function isTerminal(state) {
  return TERMINAL_STATES.includes(state.state);
}

// ---- tokens.js ----
// Where a client's credentials come from: a fixed string (an API key, a run token), or
// a function the client calls for one, and calls again when the server answers that the
// token it sent has expired (401, code "token_expired"). A run token lasts
// FLOWKIT_API_TOKEN_TTL (a day by default) while a run may wait for a person for weeks:
// a page whose app mints tokens (FlowKit.run_token) follows such a run without a reload.

/** The error code the API answers an expired run token with. */
export const TOKEN_EXPIRED = "token_expired";

export class TokenSource {
  /** @param {string | (() => string | Promise<string>) | undefined} given */
  constructor(given) {
    this.given = given;
    this.value = typeof given === "function" ? undefined : given;
    this.ready = typeof given !== "function";
    this.pending = null;
  }

  /** A function gives fresh tokens; a string is the only one there is. */
  get refreshable() {
    return typeof this.given === "function";
  }

  /** The token to send (one call of the function at a time, shared by every caller). */
  get() {
    if (this.ready) return Promise.resolve(this.value);
    if (!this.pending) {
      this.pending = Promise.resolve()
        .then(() => this.given())
        .then(
          (value) => {
            this.value = value || undefined;
            this.ready = true;
            this.pending = null;
            return this.value;
          },
          (error) => {
            this.pending = null;
            throw error;
          },
        );
    }
    return this.pending;
  }

  /** The server refused `used` as expired: the next `get()` asks the function again
   * (unless another caller already replaced that token). */
  expire(used) {
    if (this.refreshable && this.ready && this.value === used) {
      this.ready = false;
      this.value = undefined;
    }
  }
}

// ---- transport.js ----
// The two ways a browser follows a run's stream: the WebSocket relay
// (/runs/<id>/stream) and Server-Sent Events read with fetch (/runs/<id>/events).
// SSE goes through fetch rather than EventSource because EventSource cannot send
// an Authorization header nor be resumed from a cursor of our choosing, and it
// reconnects on its own; the watch owns reconnection, so both transports here
// make exactly one connection and report how it ended.

/** The close code of a socket whose run token expired (flowkit.api.ws). */
export const TOKEN_EXPIRED_CLOSE = 4001;
/** The close code of a stream whose run no longer exists (its retention ran out). */
export const NOT_FOUND_CLOSE = 4004;

/**
 * @typedef {object} TransportHandlers
 * @property {() => void} onOpen
 * @property {(event: object) => void} onEvent
 * @property {(end: TransportEnd) => void} onEnd  called once, however the connection ended
 * @property {(status: object) => void} [onStatus]  the relay's own state, not an event:
 *   `{status: "degraded", since, message}` while the server cannot read the run's events
 *   from Redis (they arrive late, none is lost), `{status: "live"}` when it can again
 *
 * @typedef {object} TransportEnd
 * @property {boolean} opened   the connection was established before it ended
 * @property {boolean} clean    the server ended it on purpose (WS close 1000, SSE body end)
 * @property {boolean} restart  the server is restarting: reconnect even after a terminal event
 * @property {number} [status]  an HTTP status that refused the connection (SSE)
 * @property {string|number} [code]  the API's error code with that status (SSE), the close code (WS)
 * @property {string} [message] why, for people
 * @property {boolean} [finished]  the run ended at the event the stream resumed from (SSE's 204)
 *
 * A stream opened with a run token ends when the token expires: the socket closes with
 * code 4001, SSE sends `event: token_expired`. Both end as the refusal of that token would
 * (`status` 401, `code` "token_expired"), so the watch asks for a fresh one and goes on.
 */

/** Resolve the client's base URL (maybe relative, e.g. "/flowkit") to an absolute URL. */
export function absoluteUrl(baseUrl, path) {
  const base = String(baseUrl ?? "").replace(/\/+$/, "");
  const here = globalThis.location?.href;
  return new URL(base + path, here ?? "http://localhost/").toString();
}

/**
 * One WebSocket connection to a run's relay, from the event after `after`.
 * The token goes in `?token=`: a browser's WebSocket cannot send headers (the API
 * accepts run tokens there; a cookie session needs nothing).
 * A page cannot see protocol pings, so every third of `idleTimeout` the socket sends
 * `{"ping": n}` (the relay answers `{"pong": n}`); no message at all for `idleTimeout`
 * is a connection that died without a reset, reported as a network failure.
 */
export function openWebSocket({ baseUrl, runId, after, token, WebSocket: Socket, idleTimeout }, handlers) {
  const url = new URL(absoluteUrl(baseUrl, `/runs/${encodeURIComponent(runId)}/stream`));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (after) url.searchParams.set("after", after);
  if (token) url.searchParams.set("token", token);
  url.searchParams.set("status", "true"); // be told when the relay cannot read Redis
  let opened = false;
  let ended = false;
  let idle = null;
  let pinger = null;
  const stopTimers = () => {
    clearTimeout(idle);
    clearInterval(pinger);
  };
  const end = (detail) => {
    if (ended) return;
    ended = true;
    stopTimers();
    handlers.onEnd({ opened, ...detail });
  };
  let socket;
  try {
    socket = new Socket(url.toString());
  } catch (error) {
    queueMicrotask(() => end({ clean: false, restart: false, message: String(error) }));
    return { close() {} };
  }
  const alive = () => {
    clearTimeout(idle);
    if (!idleTimeout) return;
    idle = setTimeout(() => {
      end({ clean: false, restart: false, message: `no data for ${idleTimeout} ms` });
      try {
        socket.close(); // whatever the dead connection does now is not reported
      } catch {
        /* already closing */
      }
    }, idleTimeout);
  };
  socket.onopen = () => {
    opened = true;
    alive();
    if (idleTimeout) {
      let n = 0;
      pinger = setInterval(() => {
        try {
          socket.send(JSON.stringify({ ping: ++n }));
        } catch {
          /* closing: onclose reports it */
        }
      }, Math.max(1, Math.floor(idleTimeout / 3)));
    }
    handlers.onOpen();
  };
  socket.onmessage = (message) => {
    if (ended) return;
    alive();
    let event;
    try {
      event = JSON.parse(typeof message.data === "string" ? message.data : String(message.data));
    } catch {
      return; // not an event: nothing the relay sends, ignored
    }
    if (event && typeof event === "object" && !("id" in event)) {
      if ("status" in event) handlers.onStatus?.(event);
      if ("pong" in event || "status" in event) return;
    }
    handlers.onEvent(event);
  };
  socket.onerror = () => {}; // onclose follows with the code
  socket.onclose = (close) => {
    if (close.code === TOKEN_EXPIRED_CLOSE) {
      end({ clean: false, restart: false, status: 401, code: TOKEN_EXPIRED, message: close.reason });
      return;
    }
    if (close.code === NOT_FOUND_CLOSE) {
      // the run is gone (its retention ran out): a 404, as a reconnect's handshake would be
      // answered; a watch without a token reconnected to it for ever
      const message = close.reason.replace(/^not_found: /, "");
      end({ clean: false, restart: false, status: 404, code: "not_found", message });
      return;
    }
    end({ clean: close.code === 1000, restart: close.code === 1012, code: close.code, message: close.reason });
  };
  return {
    close() {
      if (ended) return;
      ended = true; // our own close is not reported
      stopTimers();
      try {
        socket.close(1000);
      } catch {
        /* already closing */
      }
    },
  };
}

/**
 * One SSE response from the run's events endpoint, read with fetch from the event
 * after `after` (sent as Last-Event-ID, the header SSE defines for resuming).
 */
export function openEventStream({ baseUrl, runId, after, token, credentials, fetch: fetchFn, idleTimeout }, handlers) {
  const controller = new AbortController();
  let opened = false;
  let ended = false;
  let idle = null;
  const end = (detail) => {
    if (ended) return;
    ended = true;
    clearTimeout(idle);
    handlers.onEnd({ opened, restart: false, ...detail });
  };
  // The server writes a ping comment every ping interval: silence for longer than
  // idleTimeout is a connection that died without a reset (a sleeping laptop, a NAT that
  // forgot it), which fetch would wait on forever.
  const stillAlive = () => {
    clearTimeout(idle);
    if (!idleTimeout || ended) return; // closed: data already read is no sign of life to wait on
    idle = setTimeout(() => {
      end({ clean: false, message: `no data for ${idleTimeout} ms` });
      controller.abort();
    }, idleTimeout);
  };
  const headers = { Accept: "text/event-stream" };
  if (after) headers["Last-Event-ID"] = after;
  if (token) headers.Authorization = `Bearer ${token}`;
  const url = absoluteUrl(baseUrl, `/runs/${encodeURIComponent(runId)}/events?status=true`);
  (async () => {
    const response = await fetchFn(url, { headers, credentials, signal: controller.signal, cache: "no-store" });
    if (!response.ok) {
      let message = response.statusText;
      let code;
      try {
        const error = (await response.json()).error;
        message = error?.message ?? message;
        code = error?.code;
      } catch {
        /* not the API's JSON error */
      }
      const retryAfter = Number(response.headers.get("Retry-After")) || undefined;
      end({ clean: false, status: response.status, code, message, retryAfter });
      return;
    }
    if (response.status === 204) {
      // resumed from the ended run's last event: nothing more will come
      end({ clean: true, finished: true });
      return;
    }
    opened = true;
    handlers.onOpen();
    stillAlive();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || ended) break; // ended: closed by the watch (or timed out), stop reading
      stillAlive();
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        if (/^event: ?token_expired\r?$/m.test(block)) {
          const message = parseSseBlock(block)?.error?.message ?? "This run token has expired.";
          end({ clean: false, status: 401, code: TOKEN_EXPIRED, message });
          controller.abort();
          return;
        }
        if (/^event: ?not_found\r?$/m.test(block)) {
          // the run is gone (its retention ran out): it was handed on as a run event
          const message = parseSseBlock(block)?.error?.message ?? "This run no longer exists.";
          end({ clean: false, status: 404, code: "not_found", message });
          controller.abort();
          return;
        }
        const event = parseSseBlock(block);
        if (/^event: ?status\r?$/m.test(block)) {
          if (event && !ended) handlers.onStatus?.(event);
          continue;
        }
        if (/^event: ?(?!message\r?$)/m.test(block)) continue; // no run event: none we know
        if (event && !ended) handlers.onEvent(event);
      }
    }
    end({ clean: true });
  })().catch((error) => end({ clean: false, message: String(error?.message ?? error) }));
  return {
    close() {
      ended = true;
      clearTimeout(idle);
      controller.abort();
    },
  };
}

/** One SSE message block (lines of `field: value`) as an event, or null (a ping). */
export function parseSseBlock(block) {
  let id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  const event = JSON.parse(data.join("\n"));
  if (id && !event.id) event.id = id;
  return event;
}

// ---- client.js ----
// The client a page talks to: REST calls (start, answer, cancel, retry, reads)
// and watches that follow one run's stream. A watch delivers every event once,
// in order: it keeps the last event id (in storage too, so a refreshed page
// resumes where it was), ignores anything at or before it, reconnects with
// backoff from it, and falls back from WebSocket to SSE when a socket cannot be
// opened (no WebSocket, a proxy that refuses upgrades, an API key the socket
// cannot carry); a watch whose socket opened once retries the socket when the server
// is away or busy. The server ends a stream at the run's latest terminal event only,
// so a watch reopened after a retry gets the rest.


/** An error answered by the API: `{"error": {code, message, fields}}`, with its status. */
export class FlowkitError extends Error {
  constructor(status, code, message, fields = {}) {
    super(message);
    this.name = "FlowkitError";
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

const STORAGE_PREFIX = "flowkit.run.";
/** The longest a watch's storage lags its state (one save per this many ms). */
const PERSIST_MS = 1000;

/** The key a watch persists a run under in `storage` (e.g. sessionStorage). */
export function storageKey(runId) {
  return STORAGE_PREFIX + runId;
}

function restore(storage, runId) {
  if (!storage) return null;
  try {
    const saved = JSON.parse(storage.getItem(storageKey(runId)) ?? "null");
    return saved && saved.state && saved.state.runId === runId ? unpackState(saved.state) : null;
  } catch {
    return null; // unreadable: start from the beginning, the fold drops nothing twice
  }
}

export class FlowkitClient {
  /**
   * @param {import("../index").FlowkitClientOptions} [options]
   */
  constructor(options = {}) {
    this.baseUrl = options.baseUrl ?? "/flowkit";
    /** The `token` option as given: a string, or a function giving fresh ones. */
    this.token = options.token;
    this.tokens = new TokenSource(options.token);
    this.credentials = options.credentials ?? "same-origin";
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.backoff = { initial: 500, max: 15000, ...(options.backoff ?? {}) };
    /** ms without data before reconnecting: SSE gets the server's ping comments every ping
     * interval, a WebSocket pongs to the ping messages it sends every third of this. */
    this.idleTimeout = options.idleTimeout ?? 60000;
    /** @type {Set<RunWatch>} */
    this.watches = new Set();
  }

  /** Follow a run's events and folded state. */
  watch(runId, options = {}) {
    const w = new RunWatch(this, runId, options);
    this.watches.add(w);
    return w;
  }

  async request(method, path, { body, headers = {}, token } = {}) {
    const tokens = token === undefined ? this.tokens : new TokenSource(token);
    let used = await tokens.get();
    let answer = await this.send(method, path, body, headers, used);
    if (answer.status === 401 && answer.data?.error?.code === TOKEN_EXPIRED && tokens.refreshable) {
      tokens.expire(used); // the function gives a fresh one: ask once more
      used = await tokens.get();
      answer = await this.send(method, path, body, headers, used);
    }
    if (!answer.ok) {
      const error = answer.data?.error ?? {};
      throw new FlowkitError(answer.status, error.code ?? "http_error", error.message ?? `${method} ${path}: HTTP ${answer.status}`, error.fields ?? {});
    }
    return answer.data;
  }

  /** One HTTP exchange: its status and JSON body (null when there is none). */
  async send(method, path, body, headers, token) {
    const sent = { Accept: "application/json", ...headers };
    if (token) sent.Authorization = `Bearer ${token}`;
    if (body !== undefined) sent["Content-Type"] = "application/json";
    const url = absoluteUrl(this.baseUrl, path);
    let response;
    try {
      response = await this.fetch(url, {
        method,
        headers: sent,
        credentials: this.credentials,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      // fetch rejects with a bare TypeError ("fetch failed") when nothing answers
      const error = new FlowkitError(0, "unreachable", `${method} ${url}: no answer from the server (${err?.message ?? err}): is it running, and is baseUrl right?`);
      error.cause = err;
      throw error;
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    return { ok: response.ok, status: response.status, data };
  }

  /** Start a run of `workflow`; the API's JSON (id, state, token, urls...). */
  start(workflow, input = {}, { idempotencyKey, priority, delay } = {}) {
    const query = new URLSearchParams();
    if (priority !== undefined) query.set("priority", String(priority));
    if (delay !== undefined) query.set("delay", String(delay));
    // "" is sent, and refused (400): a key that came out empty must not start a run per retry
    const headers = idempotencyKey != null ? { "Idempotency-Key": idempotencyKey } : {};
    const qs = query.toString() ? `?${query}` : "";
    return this.request("POST", `/workflows/${encodeURIComponent(workflow)}/runs${qs}`, { body: input, headers });
  }

  /** Answer a run's `wait_for_input(name)`; the value is the JSON body. `step`: the key of
   *  the step whose wait it answers (a wait's `step` in the fold's `waits`), which several
   *  steps waiting under one name at once (fan-out items, parallel branches) need. */
  answer(runId, name, value, { step } = {}) {
    const qs = step !== undefined ? `?${new URLSearchParams({ step })}` : "";
    return this.request("POST", `/runs/${encodeURIComponent(runId)}/input/${encodeURIComponent(name)}${qs}`, { body: value });
  }

  cancel(runId) {
    return this.request("POST", `/runs/${encodeURIComponent(runId)}/cancel`);
  }

  /** Retry a failed run from its failed step; this client's ended watches of it follow on. */
  async retry(runId) {
    const run = await this.request("POST", `/runs/${encodeURIComponent(runId)}/retry`);
    for (const w of this.watches) if (w.runId === runId) w.reconnect();
    return run;
  }

  /** A fresh run token for the run: `{run_id, token, token_expires_in}` (an API key's or
   * your app's session's; a run token may not make another). What a page watching over a
   * WebSocket needs, as `token: () => api.runToken(id).then((t) => t.token)`. */
  runToken(runId) {
    return this.request("POST", `/runs/${encodeURIComponent(runId)}/token`);
  }

  /** The run's record. */
  run(runId) {
    return this.request("GET", `/runs/${encodeURIComponent(runId)}`);
  }

  /** One page of the run's history: `{events, next, done}`. */
  events(runId, { after, limit } = {}) {
    const query = new URLSearchParams();
    if (after) query.set("after", after);
    if (limit) query.set("limit", String(limit));
    const qs = query.toString() ? `?${query}` : "";
    return this.request("GET", `/runs/${encodeURIComponent(runId)}/events${qs}`);
  }
}

export class RunWatch {
  constructor(client, runId, options = {}) {
    this.client = client;
    this.runId = runId;
    this.storage = options.storage ?? null;
    this.tokens = options.token !== undefined ? new TokenSource(options.token) : client.tokens;
    this.transportChoice = options.transport ?? "auto";
    this.backoff = { ...client.backoff, ...(options.backoff ?? {}) };
    this.idleTimeout = options.idleTimeout ?? client.idleTimeout;
    const restored = restore(this.storage, runId);
    let state = restored ?? initialRunState(runId);
    if (options.lastEventId && compareEventIds(options.lastEventId, state.lastEventId) > 0) {
      state = { ...state, lastEventId: options.lastEventId };
    }
    /** @type {import("../index").RunState} */
    this.state = { ...state, connection: "connecting" };
    /** How many times a connection was opened; the transport in use. */
    this.connects = 0;
    this.transport = this.pickTransport();
    /** Why the watch stopped for good (an HTTP refusal), or null. */
    this.failure = null;
    /** A socket of this watch opened once: a later failed handshake is the server down,
     * restarting or busy, not a network that cannot carry WebSockets. */
    this.socketOpened = false;
    /** The watch left a socket that never opened for SSE (see ended()). */
    this.fellBack = false;
    /** A failed save to storage was reported (console.warn, once per watch). */
    this.saveWarned = false;
    this.subscribers = new Set();
    this.eventListeners = new Set();
    this.retries = 0;
    this.timer = null;
    /** The pending save to storage (at most one per PERSIST_MS). */
    this.persistTimer = null;
    this.current = null;
    this.stopped = false;
    this.reopen = false;
    /** Fresh tokens asked for since a connection last opened (one per expiry, not a loop). */
    this.refreshes = 0;
    this.connect();
  }

  pickTransport() {
    if (this.transportChoice === "sse") return "sse";
    if (this.transportChoice === "websocket") return "websocket";
    return this.client.WebSocket ? "websocket" : "sse";
  }

  /** Called with the state after every folded event and every connection change. */
  subscribe(listener) {
    this.subscribers.add(listener);
    return () => this.subscribers.delete(listener);
  }

  /** Called with every raw event, once, in order. */
  onEvent(listener) {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  setState(state) {
    this.state = state;
    for (const listener of [...this.subscribers]) listener(state);
  }

  setConnection(connection) {
    // a new connection's relay says again whether it is degraded: forget the last one's word
    if (this.state.connection !== connection) {
      this.setState({ ...this.state, connection, degraded: null, reconnectReason: connection === "open" ? null : this.state.reconnectReason ?? null });
    }
  }

  /** Save soon: at most once per PERSIST_MS, and at once at the run's end. Saving the
   * whole state on every event was quadratic: 6,000 events took 15.8 s against 2.7 s. A
   * reload between two saves resumes from the last saved id; what follows is sent again
   * and folded once (event ids are compared). */
  persistSoon() {
    if (!this.storage) return;
    if (isTerminal(this.state)) {
      this.persistNow();
      return;
    }
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = null;
      this.persist();
    }, PERSIST_MS);
  }

  persistNow() {
    if (this.persistTimer) clearTimeout(this.persistTimer);
    this.persistTimer = null;
    this.persist();
  }

  persist() {
    if (!this.storage) return;
    try {
      // each step's rawChunks only: its text and chunks are made from them on restore
      this.storage.setItem(storageKey(this.runId), JSON.stringify({ state: packState({ ...this.state, connection: "closed" }) }));
    } catch (error) {
      // storage full (sessionStorage holds about 5 MB) or refused: the watch goes on, and a
      // refresh resumes from the last save that worked; said once, not once a second
      if (!this.saveWarned) {
        this.saveWarned = true;
        globalThis.console?.warn?.(`flowkit: could not save run ${this.runId} to storage (${error?.name ?? "Error"}: ${error?.message ?? error}); a refresh resumes from an earlier save`);
      }
    }
  }

  connect() {
    if (this.stopped) return;
    this.timer = null;
    if (!this.tokens.ready) {
      this.fetchToken();
      return;
    }
    this.setConnection(this.connects === 0 ? "connecting" : "reconnecting");
    // a listener told "reconnecting" may close the watch (the dashboard does, once its run
    // ended): the socket opened anyway, and its "open" showed an ended run as live
    if (this.stopped) return;
    this.connects += 1;
    this.delivered = 0; // events this connection delivered
    const token = this.tokens.value;
    const options = {
      baseUrl: this.client.baseUrl,
      runId: this.runId,
      after: this.state.lastEventId,
      token,
      credentials: this.client.credentials,
      fetch: this.client.fetch,
      WebSocket: this.client.WebSocket,
      idleTimeout: this.idleTimeout,
    };
    const handlers = {
      onOpen: () => {
        if (this.stopped) return;
        this.refreshes = 0;
        if (this.transport === "websocket") this.socketOpened = true;
        this.setConnection("open");
      },
      onEvent: (event) => this.receive(event),
      onStatus: (status) => this.relayStatus(status),
      onEnd: (end) => this.ended({ ...end, token }),
    };
    this.current = this.transport === "websocket" ? openWebSocket(options, handlers) : openEventStream(options, handlers);
  }

  /** The token function's answer first, then the connection; a function that fails is
   * retried with the backoff, as a connection that failed would be, unless it failed with
   * this API's refusal (a FlowkitError 401, 403, 404 or 410: `api.runToken(id)` of a run
   * that is not there), which stops the watch with it, as a refused connection does. */
  fetchToken() {
    this.setConnection(this.connects === 0 ? "connecting" : "reconnecting");
    if (this.stopped) return; // closed by a listener told so: no token to fetch
    const pending = { close() {} };
    this.current = pending;
    this.tokens.get().then(
      () => {
        if (this.current !== pending) return; // closed, dropped or reconnected meanwhile
        this.current = null;
        this.connect();
      },
      (error) => {
        if (this.current !== pending) return;
        const refused = error instanceof FlowkitError && [401, 403, 404, 410].includes(error.status)
          ? { status: error.status, code: error.code, message: error.message } : {};
        this.ended({ opened: false, clean: false, restart: false, tokenFailed: true, message: `token: ${error?.message ?? error}`, ...refused });
      },
    );
  }

  /** The relay's word on itself: "degraded" while the server cannot read the run's
   * events (they arrive late, none is lost), "open" again when it can. */
  relayStatus(status) {
    if (this.stopped || this.current === null) return;
    if (status?.status === "degraded") {
      this.setState({ ...this.state, connection: "degraded", degraded: { since: status.since, message: status.message } });
    } else if (status?.status === "live" && this.state.connection === "degraded") {
      this.setState({ ...this.state, connection: "open", degraded: null });
    }
  }

  receive(event) {
    if (this.stopped || !event || typeof event !== "object") return;
    if (event.id && this.state.lastEventId && compareEventIds(event.id, this.state.lastEventId) <= 0) {
      return; // already delivered (a resend across a reconnect)
    }
    this.retries = 0; // the connection delivers: a later drop starts the backoff over
    this.delivered += 1;
    const state = foldEvent(this.state, event);
    this.state = state;
    this.persistSoon();
    for (const listener of [...this.eventListeners]) listener(event);
    this.setState(this.state);
  }

  ended(end) {
    this.current = null;
    if (this.stopped) return;
    if (end.finished) {
      // the server says the run ended at the last event this watch has (SSE's 204)
      this.setConnection("closed");
      return;
    }
    if (end.status === 401 && end.code === TOKEN_EXPIRED && this.tokens.refreshable && this.refreshes === 0) {
      this.refreshes += 1; // a fresh token refused as expired too stops the watch below
      this.tokens.expire(end.token);
      this.transport = this.pickTransport(); // a socket refused for the old token may open now
      this.connect();
      return;
    }
    // ... and a socket that opened before: its token may have expired since (the watch
    // page's link), which a fall back to SSE used to say and a socket retried for ever; a
    // watch without a token is checked too (a session the host app ended: its 401 was
    // retried for ever)
    const checkable = this.tokens.refreshable || this.transportChoice === "websocket" || this.socketOpened;
    if (!end.opened && !end.checked && !end.tokenFailed && checkable && this.transport === "websocket") {
      this.checkRefusal(end); // was it the token? A browser does not say why a socket failed
      return;
    }
    if (!end.opened && !end.tokenFailed && this.transport === "websocket" && this.transportChoice === "auto" && !this.socketOpened) {
      this.transport = "sse"; // no socket of this watch ever opened: follow over SSE from now on
      this.fellBack = true;
      this.connect();
      return;
    }
    if (this.fellBack && this.transport === "sse" && !end.opened && !end.tokenFailed && (!end.status || end.status === 429 || end.status === 503)) {
      // SSE cannot open either: the server is away or busy (429 too_many_streams, 503),
      // which may be all that stopped the socket: the next try is a socket again
      this.transport = "websocket";
      this.fellBack = false;
    }
    if (end.status && [400, 401, 403, 404, 410].includes(end.status)) {
      this.failure = { status: end.status, message: end.message ?? "", code: end.code ?? null };
      this.setState({ ...this.state, connection: "closed", failure: this.failure });
      return;
    }
    if (end.status === 429 || end.status === 503) {
      // the server said why and when to come back (too many streams of this run or caller
      // open, a server restarting): wait that long, and say why meanwhile
      const seconds = end.retryAfter > 0 ? end.retryAfter : 5;
      this.retries += 1;
      this.setState({ ...this.state, connection: "reconnecting", reconnectReason: end.message || null });
      this.timer = setTimeout(() => this.connect(), seconds * 1000 * (1 + Math.random() / 4));
      return;
    }
    const reopen = this.reopen;
    this.reopen = false;
    if (end.opened && !end.restart && isTerminal(this.state) && !reopen) {
      // The server ends the stream at the run's latest terminal event: a clean close there is
      // the end. An unclean one (a drop; or werkzeug's dev server, which writes after
      // flask-sock's close frame, so Chromium reports 1006) is checked by one more connection:
      // one that delivers nothing and closes means nothing came after (a retried run's
      // earlier run.failed is followed by more).
      if (end.clean || this.delivered === 0) {
        this.setConnection("closed");
        return;
      }
      this.connect();
      return;
    }
    const { initial, max } = this.backoff;
    const delay = Math.min(max, initial * 2 ** this.retries) * (0.5 + Math.random() / 2);
    this.retries += 1;
    this.setConnection("reconnecting");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** A browser hides why a WebSocket handshake failed: the same token, sent as the socket
   * sends it (`?token=`), on one REST call tells an expired token (then refreshed, as any
   * "token_expired") and a token the socket refuses (an API key: `?token=` takes run tokens
   * only) from anything else (the connection's end as it was). Without it, a watch on
   * `transport: "websocket"` that reconnected after its token expired retried the dead token
   * for ever, and one given an API key retried it for ever without saying why. */
  checkRefusal(end) {
    const pending = { close() {} };
    this.current = pending;
    const settle = (answer) => {
      if (this.current !== pending) return; // closed, dropped or reconnected meanwhile
      const status = answer?.status;
      const error = answer?.data?.error ?? {};
      if (status === 401 && error.code === TOKEN_EXPIRED) {
        this.ended({ ...end, checked: true, status: 401, code: TOKEN_EXPIRED });
      } else if ([401, 403, 404, 410].includes(status)) {
        const hint = status === 401 && end.token && this.transportChoice === "websocket"
          ? " (the WebSocket carries its token as ?token=, which takes run tokens only: an API key needs transport \"auto\" or \"sse\")"
          : "";
        this.ended({ ...end, checked: true, status, code: error.code ?? null, message: `${error.message ?? `HTTP ${status}`}${hint}` });
      } else {
        this.ended({ ...end, checked: true });
      }
    };
    const query = end.token ? `?token=${encodeURIComponent(end.token)}` : "";
    this.client.send("GET", `/runs/${encodeURIComponent(this.runId)}${query}`, undefined, {}, undefined).then(settle, () => settle(null));
  }

  /** Open the stream again from the last event id (after a retry, or to go on after closed). */
  reconnect() {
    if (this.stopped) return;
    this.retries = 0;
    if (this.current) {
      this.reopen = true; // a stream ending now (the old terminal event) is followed by another
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.connect();
  }

  /** Cut the current connection as a network failure would: the watch reconnects on its own. */
  drop() {
    if (!this.current) return;
    const current = this.current;
    this.current = null;
    current.close();
    this.ended({ opened: true, clean: false, restart: false, message: "dropped" });
  }

  /** Stop following; the persisted state stays for a later watch. */
  close() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.persistTimer) this.persistNow();
    this.current?.close();
    this.current = null;
    this.client.watches.delete(this);
    this.setConnection("closed");
  }
}
