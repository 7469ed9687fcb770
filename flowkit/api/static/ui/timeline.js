// The step timeline as SVG: one row per step key, one bar per attempt coloured by its
// outcome (a retried or restarted attempt is hatched and marked), redrawn as events come.
// Fan-outs with many items collapse to one row per fan-out (items grouped by key
// pattern): a bar from the first item's start to the last one's end, split by outcome.

import { eventTime } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const ROW = 22, LABEL = 190, WIDTH = 900;
/** More items than this under one fan-out pattern draw as one aggregate row. */
export const GROUP_OVER = 12;

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** "2[17]:square" -> "2[*]:square": the fan-out a step key belongs to. */
export function groupOf(key) {
  return String(key).replace(/\[\d+\]/g, "[*]");
}

/** Attempts per step from the events: [{step, attempt, start, end, outcome}]. */
export function attemptsOf(events) {
  const open = new Map();
  const all = [];
  for (const e of events) {
    const t = eventTime(e);
    const id = `${e.step}#${e.attempt ?? 1}`;
    if (e.type === "step.started") {
      const a = { step: e.step, attempt: e.attempt ?? 1, start: t, end: null, outcome: "running" };
      open.set(id, a); all.push(a);
    } else if (["step.completed", "step.failed", "step.retrying"].includes(e.type)) {
      // an attempt retried inside its task has no step.started: step.retrying opens it
      const a = open.get(id) ?? [...open.values()].find((o) => o.step === e.step);
      if (!a) continue;
      a.end = t; a.outcome = e.type === "step.completed" ? "completed" : e.type === "step.failed" ? "failed" : "retried";
      open.delete(`${a.step}#${a.attempt}`);
      if (e.type === "step.retrying") {
        const next = { step: e.step, attempt: e.next_attempt ?? a.attempt + 1, start: t + (e.delay ?? 0), end: null, outcome: "running" };
        open.set(`${e.step}#${next.attempt}`, next); all.push(next);
      }
    } else if (e.type === "run.restarted") {
      for (const s of e.superseded ?? []) {
        const a = open.get(`${s.step}#${s.attempt ?? 1}`);
        if (a) { a.end = t; a.outcome = "restarted"; open.delete(`${s.step}#${s.attempt ?? 1}`); }
      }
      for (const a of open.values()) if (a.outcome === "running") { a.end = t; a.outcome = "restarted"; }
      open.clear();
    } else if (/^run\.(succeeded|failed|cancelled)$/.test(e.type)) {
      for (const a of open.values()) { a.end = t; a.outcome = e.type === "run.cancelled" ? "cancelled" : a.outcome; }
      open.clear();
    }
  }
  return all;
}

/** Draw the timeline into `host` (an element); `order`: step keys in first-seen order. */
export function drawTimeline(host, events, order, now) {
  const attempts = attemptsOf(events);
  const restarts = events.filter((e) => e.type === "run.restarted").map(eventTime);
  const first = events.length ? eventTime(events[0]) : now;
  const last = Math.max(now, ...attempts.map((a) => a.end ?? now));
  const span = Math.max(last - first, 0.001);
  const x = (t) => LABEL + ((t - first) / span) * (WIDTH - LABEL - 10);
  const byStep = new Map();
  for (const a of attempts) (byStep.get(a.step) ?? byStep.set(a.step, []).get(a.step)).push(a);
  const groups = new Map();
  for (const key of order) (groups.get(groupOf(key)) ?? groups.set(groupOf(key), []).get(groupOf(key))).push(key);
  const rows = [];
  for (const [group, keys] of groups) {
    if (keys.length > GROUP_OVER) rows.push({ label: `${group} ×${keys.length}`, group: keys });
    else for (const key of keys) rows.push({ label: key, key });
  }
  const height = rows.length * ROW + 30;
  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${height}`, width: "100%", role: "img",
    "aria-label": `Step timeline: ${rows.length} rows over ${span.toFixed(1)} seconds` });
  root.append(svg("title", {}, "Step timeline"));
  rows.forEach((row, i) => {
    const y = i * ROW + 4;
    const g = svg("g", { class: "row", "data-step": row.key ?? row.label });
    g.append(svg("text", { x: 4, y: y + 14, class: "label" }, row.label.length > 28 ? "…" + row.label.slice(-27) : row.label));
    if (row.key) {
      for (const a of byStep.get(row.key) ?? []) {
        const x1 = x(a.start), x2 = Math.max(x(a.end ?? now), x1 + 2);
        const bar = svg("rect", { x: x1, y, width: x2 - x1, height: ROW - 8, rx: 2, class: `bar ${a.outcome}`,
          "data-attempt": a.attempt });
        bar.append(svg("title", {}, `${row.key} attempt ${a.attempt}: ${a.outcome}, ${((a.end ?? now) - a.start).toFixed(2)} s`));
        g.append(bar);
        if (a.attempt > 1) g.append(svg("text", { x: x1 + 2, y: y + 11, class: "mark" }, `↻${a.attempt}`));
      }
    } else {
      const items = row.group.flatMap((k) => byStep.get(k) ?? []);
      if (items.length) {
        const start = Math.min(...items.map((a) => a.start));
        const end = Math.max(...items.map((a) => a.end ?? now));
        const counts = {};
        for (const a of items) counts[a.outcome] = (counts[a.outcome] ?? 0) + 1;
        let at = x(start);
        const w = Math.max(x(end) - at, 2);
        for (const [outcome, n] of Object.entries(counts)) {
          const part = (w * n) / items.length;
          const bar = svg("rect", { x: at, y, width: part, height: ROW - 8, class: `bar ${outcome}` });
          bar.append(svg("title", {}, `${n} attempts ${outcome}`));
          g.append(bar);
          at += part;
        }
      }
    }
    root.append(g);
  });
  for (const t of restarts) {
    root.append(svg("line", { x1: x(t), x2: x(t), y1: 0, y2: rows.length * ROW, class: "restart" }));
  }
  root.append(svg("text", { x: LABEL, y: height - 8, class: "axis" }, "0 s"));
  root.append(svg("text", { x: WIDTH - 10, y: height - 8, class: "axis", "text-anchor": "end" }, `${span.toFixed(1)} s`));
  host.replaceChildren(root);
}
