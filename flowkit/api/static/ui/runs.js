// The runs list: newest first, filtered by workflow, state and owner, searchable by id,
// paged with the API's `before` cursor. It polls its page (the API has no stream of all
// runs), so new runs appear and states change within a poll. The filters live in the
// query string: a refresh or a shared link shows the same list.

import { h, fill, duration, when, tokensText, costText } from "./dom.js";
import { urls } from "./session.js";

const STATES = ["scheduled", "queued", "running", "waiting", "succeeded", "failed", "cancelled"];
const POLL_MS = 1500;

export function runsView(main, client) {
  const params = new URLSearchParams(location.search);
  const filters = {
    workflow: params.get("workflow") ?? "", state: params.get("state") ?? "",
    owner: params.get("owner") ?? "", q: params.get("q") ?? "", before: params.get("before") ?? "",
  };
  const workflowSelect = h("select", { id: "f-workflow", name: "workflow" }, h("option", { value: "" }, "any"));
  const stateSelect = h("select", { id: "f-state", name: "state" }, h("option", { value: "" }, "any"),
    STATES.map((s) => h("option", { value: s }, s)));
  const ownerInput = h("input", { id: "f-owner", name: "owner", type: "search", value: filters.owner });
  const idInput = h("input", { id: "f-q", name: "q", type: "search", placeholder: "run id", value: filters.q });
  stateSelect.value = filters.state;
  const form = h("form", { class: "filters", role: "search", onsubmit: (e) => { e.preventDefault(); apply(); } },
    h("label", { for: "f-workflow" }, "Workflow"), workflowSelect,
    h("label", { for: "f-state" }, "State"), stateSelect,
    h("label", { for: "f-owner" }, "Owner"), ownerInput,
    h("label", { for: "f-q" }, "Run id"), idInput,
    h("button", { type: "submit" }, "Filter"));
  workflowSelect.onchange = stateSelect.onchange = () => apply();
  const body = h("tbody", { id: "runs" });
  const status = h("p", { class: "muted", id: "runs-status", "aria-live": "polite" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  // Failed runs listed (the state filter at "failed"): retried together, as `flowkit retry
  // --failed` does from a terminal (an incident's hundred failed runs were retried one page
  // each). Only the rows shown: what a person sees is what they retry.
  const retryShown = h("button", { type: "button", id: "retry-shown", hidden: true, onclick: () => retryFailed() });
  const bulkStatus = h("p", { id: "bulk-status", "aria-live": "polite" });
  const bulk = h("div", { class: "actions" }, retryShown, bulkStatus);
  const table = h("table", { class: "runs" }, h("thead", {}, h("tr", {},
    ["Run", "Workflow", "State", "Owner", "Created", "Duration", "Steps", "Tokens", "Cost", "Restarts", "Detail"].map((c) => h("th", { scope: "col" }, c)))), body);
  // the table scrolls in its own box: on a phone (360 px) it pushed the whole page sideways
  fill(main, h("h1", {}, "Runs"), form, bulk, h("div", { class: "scroll" }, table), status, pager);

  client.request("GET", "/workflows").then(({ workflows }) => {
    for (const wf of workflows) workflowSelect.append(h("option", { value: wf.name }, wf.name));
    workflowSelect.value = filters.workflow;
  }).catch(() => {});

  function apply(before = "") {
    filters.workflow = workflowSelect.value; filters.state = stateSelect.value;
    filters.owner = ownerInput.value.trim(); filters.q = idInput.value.trim(); filters.before = before;
    const qs = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, "", `${location.pathname}${qs.toString() ? "?" + qs : ""}`);
    poll();
  }

  let shown = [];  // the runs of the rows shown
  let retrying = false;
  async function retryFailed() {
    const ids = shown.filter((r) => r.state === "failed").map((r) => r.id);
    const runs = `${ids.length} failed run${ids.length === 1 ? "" : "s"}`;
    if (!ids.length || retrying || !confirm(`Retry the ${runs} shown? Each resumes from its failed step.`)) return;
    retrying = true;
    retryShown.disabled = true;
    bulkStatus.className = "muted";
    const refused = [];
    for (const [i, id] of ids.entries()) {
      bulkStatus.textContent = `Retrying ${i + 1} of ${ids.length}…`;
      try {
        await client.retry(id);
      } catch (error) {  // retried elsewhere meanwhile (409), gone, or the API away
        refused.push(`${id}: ${error.message}`);
      }
    }
    bulkStatus.className = refused.length ? "error" : "muted";
    bulkStatus.textContent = `Retried ${ids.length - refused.length} of ${runs}.` +
      (refused.length ? ` Not retried: ${refused.join("; ")}` : "");
    retrying = false;
    retryShown.disabled = false;
    poll();
  }

  let timer = null;
  let generation = 0;
  let updated = null;  // when the rows shown were read
  async function poll() {
    clearTimeout(timer);
    const mine = ++generation;
    let runs, next = null;
    try {
      if (filters.q) {
        runs = [await client.run(filters.q)].filter(Boolean);
      } else {
        const qs = new URLSearchParams({ limit: "50" });
        if (filters.workflow) qs.set("workflow", filters.workflow);
        if (filters.state) qs.set("state", filters.state);
        if (filters.owner) qs.set("owner", filters.owner);
        if (filters.before) qs.set("before", filters.before);
        const page = await client.request("GET", `/runs?${qs}`);
        runs = page.runs; next = page.next;
      }
      // a run found by its id is held to the filters shown beside the search, as a page is
      if (filters.q) {
        runs = runs.filter((r) => (!filters.owner || r.owner === filters.owner)
          && (!filters.workflow || r.workflow === filters.workflow) && (!filters.state || r.state === filters.state));
      }
      if (mine !== generation) return;
      render(runs, next);
      await summarise(runs);
      if (mine !== generation) return;
      render(runs, next);
      updated = new Date().toLocaleTimeString();
      table.classList.remove("stale");
      status.className = "muted";
      status.textContent = `${runs.length} run${runs.length === 1 ? "" : "s"} · updated ${updated}`;
    } catch (error) {
      if (mine !== generation) return;
      if (error.status === 404 && filters.q) {
        render([], null);
        status.textContent = `No run ${filters.q}.`;
      } else {  // the rows shown are as of the last answer: greyed, and said so
        table.classList.add("stale");
        status.className = "error";
        status.textContent = `Could not load runs: ${error.message}${updated ? ` (showing those of ${updated}; trying again)` : ""}`;
      }
    }
    if (mine === generation) timer = setTimeout(poll, POLL_MS);
  }

  // Steps, tokens and cost come from each run's events and trace: asked for the rows shown,
  // and asked again only while a run goes on, or once it ended again (an end's summary does
  // not change, but a failed run may be retried: its row showed the failed end's "1/2" steps
  // beside "succeeded").
  const summaries = new Map();
  const ended = new Map();  // run id -> the end its summary was read at
  const endOf = (run) => `${run.state}@${run.finished_at}`;
  async function summarise(runs) {
    const wanted = runs.filter((r) => ended.get(r.id) !== endOf(r)).map((r) => r.id);
    if (!wanted.length) return;
    try {
      const { runs: got } = await client.request("GET", `/runs/summary?ids=${wanted.map(encodeURIComponent).join(",")}`);
      for (const run of runs) {
        if (!got[run.id]) continue;
        summaries.set(run.id, got[run.id]);
        if (["succeeded", "failed", "cancelled"].includes(run.state)) ended.set(run.id, endOf(run));
        else ended.delete(run.id);
      }
    } catch { /* the list shows without them */ }
  }

  // The one thing to know about a run in its row, as `flowkit runs` says it: why it failed
  // (a hundred runs failed at one step: each had to be opened to see it), what holds it back
  const short = (text, most) => (text.length > most ? `${text.slice(0, most - 1)}…` : text);
  function detail(run) {
    const e = run.error;
    if (e) return `${e.step ? `${e.step}: ` : ""}${e.type ?? "Error"}: ${e.message ?? ""}`;
    if (run.held_for) return run.held_for;
    if (run.state === "scheduled" && run.start_at) return `starts ${when(run.start_at)}`;
    return run.waiting_for ?? "";
  }

  function render(runs, next) {
    const now = Date.now() / 1000;
    shown = runs;
    const failed = runs.filter((r) => r.state === "failed").length;
    retryShown.hidden = !(filters.state === "failed" && failed);
    retryShown.textContent = `Retry the ${failed} failed run${failed === 1 ? "" : "s"} shown`;
    fill(body, runs.map((run) => {
      const end = run.finished_at ?? (["running", "waiting", "queued"].includes(run.state) ? now : null);
      const began = run.started_at ?? run.created_at;
      return h("tr", { dataset: { run: run.id, state: run.state } },
        h("td", {}, h("a", { href: `${urls.ui}/runs/${encodeURIComponent(run.id)}` }, run.id)),
        h("td", {}, `${run.workflow} `, h("span", { class: "muted" }, run.version ? `v${run.version}` : "")),
        h("td", {}, h("span", { class: `badge ${run.state}` }, run.state)),
        h("td", {}, run.owner || "—"),
        h("td", {}, when(run.created_at)),
        h("td", {}, end && began ? duration(end - began) : "—"),
        h("td", { class: "steps" }, summaries.has(run.id) ? `${summaries.get(run.id).completed}/${summaries.get(run.id).steps}` : "…"),
        h("td", {}, tokensText(summaries.get(run.id)?.tokens)),
        h("td", {}, costText(summaries.get(run.id)?.cost)),
        h("td", {}, String(run.restarts ?? 0)),
        h("td", { class: "detail", title: detail(run) }, short(detail(run), 70)));
    }));
    if (!runs.length) body.append(h("tr", {}, h("td", { colspan: 11, class: "muted" }, "No runs match.")));
    fill(pager,
      filters.before ? h("button", { type: "button", onclick: () => apply("") }, "Newest") : null,
      next ? h("button", { type: "button", id: "older", onclick: () => apply(next) }, "Older →") : null);
  }

  poll();
}
