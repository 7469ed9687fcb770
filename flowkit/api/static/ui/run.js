// One run: header, actions, the answer form of a waiting run, the SVG step timeline,
// the final output or error, one output pane per step (fan-out items grouped and paged),
// the trace tree and the typed event log. Used by the dashboard (API credentials) and by
// the watch page (a run token: it reads this run only and may answer its waits).
//
// The page keeps the events it has seen in sessionStorage and folds them with the
// client's foldEvent; on a refresh or a dropped connection it resumes the client's watch
// from the last event id it holds, so nothing is fetched twice and nothing is missed.

import { FlowkitClient, foldEvent, initialRunState, isTerminal } from "../client/flowkit-client.js";
import { h, fill, duration, when, eventTime, tokensText, costText, pretty, throttle } from "./dom.js";
import { drawTimeline, groupOf, GROUP_OVER } from "./timeline.js";
import { drawTrace } from "./trace.js";
import { answerForm } from "./form.js";

const PAGE = 20;          // fan-out items per page of a group's pane
const LOG_SHOWN = 300;    // newest events drawn in the log (the filter narrows first)
const ACTIVE = ["scheduled", "queued", "running", "waiting"];

function storeKey(runId) { return `flowkit.ui.events.${runId}`; }

function restore(runId) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(storeKey(runId)) ?? "null");
    return Array.isArray(saved) ? saved : [];
  } catch { return []; }
}

export function runView(main, client, runId, { dashboard = false } = {}) {
  const ui = {
    header: h("section", { id: "run-header", "aria-label": "Run" }),
    actions: h("div", { id: "actions", class: "actions" }),
    // what an action or an answer came to once its button or form was gone (the run moved
    // on meanwhile): kept across redraws, each until dismissed
    notices: h("div", { id: "notices", "aria-live": "polite" }),
    answer: h("div", { id: "answer" }),
    final: h("section", { id: "final", "aria-label": "Result" }),
    timeline: h("figure", { id: "timeline", class: "timeline" }),
    steps: h("div", { id: "steps" }),
    trace: h("div", { id: "trace" }),
    log: h("ol", { id: "events", class: "log" }),
    connection: h("span", { id: "connection", class: "muted", "aria-live": "polite" }, "connecting"),
  };
  const typeFilter = h("select", { id: "event-type", "aria-label": "Event type" }, h("option", { value: "" }, "all types"));
  const stepFilter = h("input", { id: "event-step", type: "search", placeholder: "step", "aria-label": "Step" });
  typeFilter.onchange = stepFilter.oninput = () => drawLog();
  fill(main,
    h("h1", {}, "Run ", h("code", { id: "run" }, runId), " ", ui.connection),
    ui.header, ui.actions, ui.notices, ui.answer, ui.final,
    h("h2", {}, "Timeline"), ui.timeline,
    h("h2", {}, "Steps"), ui.steps,
    h("details", { id: "trace-section", ontoggle: (e) => { if (e.target.open) loadTrace(); } },
      h("summary", {}, h("h2", {}, "Trace")), ui.trace),
    h("section", { "aria-label": "Events" }, h("h2", {}, "Events"),
      h("div", { class: "filters" }, typeFilter, stepFilter), ui.log));

  const events = restore(runId);
  let folded = events.reduce(foldEvent, initialRunState(runId));
  let record = null;
  let totals = null;        // tokens and cost of the whole run (cost is in the trace only)
  let watch = null;
  const pages = {};         // group -> page shown
  const opened = new Set(); // steps whose output the reader opened: kept open across redraws
  const types = new Set();

  // Saving the whole list on every event would be quadratic: at most once a second, and as
  // the page goes away. A refresh replays from the last saved id (the fold is idempotent).
  let saveTimer = null;
  const save = () => {
    saveTimer = null;
    const saved = JSON.stringify(events);
    try { sessionStorage.setItem(storeKey(runId), saved); return; } catch { /* full */ }
    // full of the runs seen before in this tab (never removed: after a few large ones no
    // run's events were kept, and each refresh replayed its whole history): theirs go
    for (const key of Object.keys(sessionStorage)) {
      if (key.startsWith(storeKey("")) && key !== storeKey(runId)) sessionStorage.removeItem(key);
    }
    try { sessionStorage.setItem(storeKey(runId), saved); } catch { /* still full: a refresh replays */ }
  };
  addEventListener("pagehide", save);

  function receive(event) {
    const before = folded;
    folded = foldEvent(folded, event);
    if (folded === before) return;
    events.push(event);
    if (!saveTimer) saveTimer = setTimeout(save, 1000);
    if (event.type.startsWith("run.")) refreshRecord();
    render();
  }

  // A run token given as a string ends with its day: this page cannot mint another one, and
  // what needs the token (answering a wait, reading the record) stops with it.
  let expired = false;
  // refused before anything was read: the header said "connecting" under the refusal
  let refused = false;
  const shownState = () => folded.state ?? record?.state ?? (refused ? "unknown" : "connecting");
  function refusal(failure) {
    if (!record?.state && !events.length) {
      refused = true;
      render();
    }
    // the API's own words for an unknown run ("No run ... (unknown, or expired ...)"), not
    // "refused (404)" over an empty run, which read as a permissions problem
    if (failure.status === 404) return failure.message || "no such run (unknown, or expired)";
    // a watch link without its token: "send an API key" asked for what this page cannot use
    if (!dashboard && !client.token && failure.status === 401) {
      return "this link has no run token (?token=...): open the run again from the app that gave you this page";
    }
    // with the API's reason: "refused (401)" alone left the reader to guess which
    if (failure.code !== "token_expired") return `refused (${failure.status})${failure.message ? `: ${failure.message}` : ""}`;
    if (!expired) {
      expired = true;
      drawActions(shownState());
    }
    return "link expired: open the run again from the app that gave you this page";
  }

  function follow() {
    if (watch) return;
    // an API key never goes in a URL, as a WebSocket carries its credential: the socket
    // gets a run token the key makes (and makes again when it expires). Over SSE, each
    // run's tab held one of the browser's 6 connections to this server: a 7th stalled
    const follower = dashboard && client.token ? new FlowkitClient({
      baseUrl: client.baseUrl, credentials: client.credentials,
      token: () => client.runToken(runId).then((made) => made.token),
    }) : client;
    watch = follower.watch(runId, { lastEventId: folded.lastEventId });
    watch.onEvent(receive);
    watch.subscribe((state) => {
      ui.connection.textContent = state.failure ? refusal(state.failure) : state.connection === "open" ? "live"
        : state.connection === "degraded" ? "delayed: the server cannot reach its store; events will follow"
        : state.connection === "reconnecting" && state.reconnectReason ? `reconnecting: ${state.reconnectReason}` : state.connection;
      ui.connection.dataset.connection = state.connection;
      // the stream of an ended run closes at once (this page's history is complete)
      if ((state.connection === "closed" || state.connection === "reconnecting") && isTerminal(folded) && !state.failure) {
        watch.close(); watch = null; ui.connection.textContent = "ended"; ui.connection.dataset.connection = "ended";
      }
    });
    window.flowkitRun.watch = watch;
  }

  const refreshRecord = throttle(async () => {
    try { record = await client.run(runId); } catch (error) { record = record ?? { error_loading: error.message }; }
    // retried elsewhere (another tab, the API) since its stream ended here: follow it again
    // (it may have ended again already: another state than the one this page folded, or
    // the same one ended later than the end this page holds)
    const endedAgain = record?.finished_at > (eventTime(events.at(-1) ?? {}) ?? Infinity) + 0.01;
    if (record?.state && isTerminal(folded) && (record.state !== folded.state || endedAgain) && !watch) follow();
    render();
    try { totals = (await client.request("GET", `/runs/summary?ids=${encodeURIComponent(runId)}`)).runs[runId]; } catch { /* header shows the fold's */ }
    render();
  });

  // the button stays disabled while its call is out, and after it worked until the run's new
  // state redraws the actions: a double click acted twice (the second click landed once the
  // first call's answer had enabled the button again), and its 409 showed as an error
  async function act(label, call, button) {
    if (button) button.disabled = true;
    try {
      await call();
    } catch (error) {
      ui.actions.append(h("p", { role: "alert", class: "error" }, `${label}: ${error.message}`));
      if (button) button.disabled = false;
    }
    refreshRecord();
  }

  // An answer refused after its wait closed (another answer came first: "the first answer
  // stands") was written into its form, gone with the wait: the person saw the run go on
  // with the other answer, and no word that theirs was refused.
  async function answered({ name, step }, value, form) {
    try {
      // its step's wait: fan-out items asking under one name each have a form of their own
      await client.answer(runId, name, value, step ? { step } : {});
    } catch (error) {
      if (!form.isConnected) notice(`Your answer to “${name}” was not taken: ${error.message}`);
      throw error;
    }
  }

  function notice(text) {
    const item = h("p", { role: "alert", class: "error notice" }, text, " ",
      h("button", { type: "button", onclick: () => item.remove() }, "Dismiss"));
    ui.notices.append(item);
  }

  let traceOf = null;       // the last event id the trace shown was read after
  async function loadTrace() {
    traceOf = folded.lastEventId;
    try { drawTrace(ui.trace, (await client.request("GET", `/runs/${encodeURIComponent(runId)}/trace`)).spans); }
    catch (error) { fill(ui.trace, h("p", { class: "error" }, `Trace: ${error.message}`)); }
  }

  const render = throttle(() => {
    const now = Date.now() / 1000;
    const state = shownState();
    drawHeader(state, now);
    drawActions(state);
    drawFinal(state);
    drawTimeline(ui.timeline, events, folded.order, isTerminal(folded) ? eventTime(events.at(-1)) : now);
    drawSteps();
    drawLog();
    // an open trace is read again once when the run ends (spans are written as steps end)
    if (document.getElementById("trace-section")?.open && isTerminal(folded) && traceOf !== folded.lastEventId) loadTrace();
  });

  function drawHeader(state, now) {
    const r = record ?? {};
    const began = r.started_at ?? r.created_at;
    const end = r.finished_at ?? (isTerminal(folded) ? eventTime(events.at(-1)) : now);
    let why = null;
    if (state === "queued") why = folded.held ? `held: ${folded.held}` : r.held_for ? `held: ${r.held_for}` : r.waiting_for ?? null;
    // a running run whose step's worker stopped beating (or between steps, whose next step
    // no live worker takes): it looked as if it ran on
    if (state === "running" && record?.state === "running") why = r.waiting_for ?? null;
    if (state === "waiting" && folded.waits.length) {
      why = folded.waits.map((w) => `${w.kind} ${JSON.stringify(w.name)}${w.prompt ? `: ${w.prompt}` : ""}${w.expires_at ? ` (until ${when(w.expires_at)})` : ""}`).join("; ");
    }
    const item = (term, value, id, hidden = false) => [h("dt", { hidden }, term), h("dd", { id, hidden }, value)];
    fill(ui.header, h("dl", { class: "facts" },
      item("State", h("span", { id: "state", class: `badge ${state}`, dataset: { state } }, state)),
      item("Workflow", `${r.workflow ?? folded.workflow ?? "—"}${r.version ? ` v${r.version}` : ""}`),
      item("Owner", r.owner || "—"),
      item("Created", when(r.created_at)), item("Started", when(r.started_at)), item("Finished", when(r.finished_at)),
      item("Duration", began ? duration(end - began) : "—", "duration"),
      item("Restarts", String(r.restarts ?? 0)),
      item("Steps", `${Object.values(folded.steps).filter((s) => s.status === "completed").length} / ${folded.order.length} done`, "step-progress"),
      item("Tokens", tokensText(Object.keys(folded.tokens ?? {}).length ? folded.tokens : totals?.tokens), "tokens"),
      item("Cost", costText(folded.cost ?? totals?.cost), "cost"),
      item("Waiting for", why ?? "", "waiting", !why)));
  }

  let actionsShown = "";
  function drawActions(state) {
    // every input open at once (fan-out items each asking): a form each
    const asks = state === "waiting" && !expired ? folded.waits.filter((w) => w.kind === "input") : [];
    // each wait by the event that opened it: one opened again (its answer refused) under the
    // same name gets a fresh form (the old one stayed "Answered." with Send disabled)
    const sign = `${state}|${asks.map((w) => `${w.name}\u0001${w.opened ?? ""}`).join("\u0000")}|${expired}`;
    if (sign === actionsShown) return;  // keep focus and typed answers while events stream
    actionsShown = sign;
    fill(ui.actions);
    if (dashboard && ACTIVE.includes(state)) {
      ui.actions.append(h("button", { type: "button", id: "cancel", onclick: (e) => act("Cancel", () => client.cancel(runId), e.currentTarget) }, "Cancel run"));
    }
    if (dashboard && state === "failed") {  // the API retries failed runs only (409 else)
      ui.actions.append(h("button", { type: "button", id: "retry", onclick: (e) => act("Retry", async () => {
        await client.retry(runId);
        follow();
      }, e.currentTarget) }, "Retry run"));
    }
    fill(ui.answer, asks.map((w, i) => answerForm(w, (value, form) => answered(w, value, form),
      i === 0 ? "answer" : `answer-${i + 1}`)));
  }

  function drawFinal(state) {
    if (state === "succeeded") {
      fill(ui.final, h("h2", {}, "Output"), h("pre", { id: "run-output", class: "output" }, pretty(folded.output ?? record?.output)));
    } else if (state === "failed") {
      const error = record?.error ?? folded.error ?? {};
      const attempts = error.attempts ?? [];
      fill(ui.final, h("h2", {}, "Error"),
        h("p", { id: "run-error", class: "error", role: "alert" },
          `${error.type ? error.type + ": " : ""}${error.message ?? "failed"}`, error.step || record?.failed_step ? ` (step ${error.step ?? record?.failed_step})` : ""),
        Array.isArray(attempts) && attempts.length ? h("ol", { id: "attempt-history" },
          attempts.map((a) => h("li", {}, typeof a === "object" ? `attempt ${a.attempt ?? "?"}: ${a.error ?? a.message ?? JSON.stringify(a)}` : String(a)))) : null);
    } else if (state === "cancelled") {
      fill(ui.final, h("p", { id: "run-cancelled" }, "Cancelled."));
    } else fill(ui.final);
  }

  function stepPane(step) {
    const running = step.status === "running" || step.status === "retrying";
    return h("section", { class: `step ${step.status}`, dataset: { step: step.key }, "aria-label": `Step ${step.key}` },
      h("h3", {}, h("code", {}, step.key), " ", h("span", { class: `badge ${step.status}` }, step.status),
        step.attempts > 1 ? h("span", { class: "muted" }, ` · ${step.attempts} attempts`) : null,
        step.duration !== null ? h("span", { class: "muted" }, ` · ${duration(step.duration)}`) : null,
        step.tokens ? h("span", { class: "muted" }, ` · ${tokensText(step.tokens)} tokens`) : null),
      running && step.progress?.message ? h("p", { class: "progress" }, step.progress.message,
        typeof step.progress.fraction === "number" ? h("progress", { max: 1, value: step.progress.fraction }) : null) : null,
      step.text ? h("pre", { class: "text" }, step.text) : null,
      step.error ? h("p", { class: "error" }, typeof step.error === "string" ? step.error : step.error.message ?? JSON.stringify(step.error)) : null,
      step.output !== null && step.output !== undefined ? h("details", {
        open: opened.has(step.key) || null,
        ontoggle: (e) => { if (e.target.open) opened.add(step.key); else opened.delete(step.key); },
      }, h("summary", { dataset: { key: `output:${step.key}` } }, "output"), h("pre", { class: "output" }, pretty(step.output))) : null);
  }

  function drawSteps() {
    const groups = new Map();
    for (const key of folded.order) (groups.get(groupOf(key)) ?? groups.set(groupOf(key), []).get(groupOf(key))).push(folded.steps[key]);
    const panes = [];
    for (const [group, steps] of groups) {
      if (steps.length <= GROUP_OVER) { panes.push(...steps.map((s) => stepPane(s))); continue; }
      const counts = {};
      for (const s of steps) counts[s.status] = (counts[s.status] ?? 0) + 1;
      const pageCount = Math.ceil(steps.length / PAGE);
      const page = Math.min(pages[group] ?? 0, pageCount - 1);
      const go = (p) => { pages[group] = p; drawSteps(); };
      panes.push(h("section", { class: "group", dataset: { group }, "aria-label": `Fan-out ${group}` },
        h("h3", {}, h("code", {}, group), ` ${steps.length} items`),
        h("p", { class: "counts" }, Object.entries(counts).map(([status, n]) => h("span", { class: `badge ${status}`, dataset: { status } }, `${n} ${status}`))),
        h("nav", { class: "pager", "aria-label": `Pages of ${group}` },
          h("button", { type: "button", disabled: page === 0, dataset: { key: `prev:${group}` }, onclick: () => go(page - 1) }, "← Previous"),
          h("span", { "aria-live": "polite" }, ` items ${page * PAGE + 1}–${Math.min(steps.length, (page + 1) * PAGE)} `),
          h("button", { type: "button", disabled: page >= pageCount - 1, dataset: { key: `next:${group}` }, onclick: () => go(page + 1) }, "Next →")),
        steps.slice(page * PAGE, (page + 1) * PAGE).map((s) => stepPane(s))));
    }
    // redrawn as events come: the control a keyboard user is on keeps the focus
    const focused = ui.steps.contains(document.activeElement) ? document.activeElement.dataset.key : null;
    fill(ui.steps, panes.length ? panes : h("p", { class: "muted" }, "No step has started."));
    if (focused) ui.steps.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
  }

  function summary(e) {
    const parts = [];
    if (e.step) parts.push(e.step);
    if (e.attempt > 1) parts.push(`attempt ${e.attempt}`);
    if (e.type === "step.output") parts.push(JSON.stringify(e.chunk).slice(0, 80));
    if (e.message) parts.push(e.message);
    if (typeof e.fraction === "number") parts.push(`${Math.round(e.fraction * 100)}%`);
    if (typeof e.duration === "number") parts.push(duration(e.duration));
    if (e.tokens) parts.push(`${tokensText(e.tokens)} tokens`);
    if (typeof e.cost === "number") parts.push(costText(e.cost));
    if (e.error) parts.push(typeof e.error === "string" ? e.error : e.error.message ?? "");
    if (e.delay) parts.push(`retry in ${duration(e.delay)}`);
    if (e.why || e.reason) parts.push(e.why ?? e.reason);
    if (e.kind && e.type === "run.waiting") parts.push(`${e.kind} ${e.name ?? ""}`);
    return parts.join(" · ");
  }

  function drawLog() {
    for (const e of events) if (!types.has(e.type)) { types.add(e.type); typeFilter.append(h("option", { value: e.type }, e.type)); }
    const type = typeFilter.value, step = stepFilter.value.trim();
    const shown = events.filter((e) => (!type || e.type === type) && (!step || String(e.step ?? "").includes(step)));
    const start = events.length ? eventTime(events[0]) : 0;
    fill(ui.log, shown.length > LOG_SHOWN ? h("li", { class: "muted" }, `${shown.length - LOG_SHOWN} earlier events not drawn; filter to narrow`) : null,
      shown.slice(-LOG_SHOWN).map((e) => h("li", { dataset: { id: e.id, type: e.type } },
        h("span", { class: "t" }, `+${(eventTime(e) - start).toFixed(2)}s`), " ", h("span", { class: "type" }, e.type), " ", summary(e))));
    ui.log.dataset.count = String(shown.length);
  }

  window.flowkitRun = { events, get state() { return folded; }, watch: null };
  render();
  refreshRecord();
  follow();
  // a run that says nothing for a while (waiting for a person) still ages: the header and
  // timeline stood still between its events (only those two: a redraw of the steps would
  // drop a reader's text selection each second)
  const tick = throttle(() => {
    const now = Date.now() / 1000;
    drawHeader(shownState(), now);
    drawTimeline(ui.timeline, events, folded.order, now);
  });
  setInterval(() => { if (!isTerminal(folded) && (folded.state ?? record?.state)) tick(); }, 1000);
  // a queued run writes no event while no worker takes it: read its record again now and
  // then, so "Waiting for" follows the workers that come and go; so does a failed run's
  // page: a retry from elsewhere sends this stream nothing (it ended); and, on the dashboard,
  // a running run's, whose worker may die without a word (its watch pages, many, do not)
  setInterval(() => {
    const state = folded.state ?? record?.state;
    if (!expired && (["queued", "failed"].includes(state) || (dashboard && state === "running"))) refreshRecord();
  }, 3000);
}
