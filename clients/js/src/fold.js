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
