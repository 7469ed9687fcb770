// The run's trace as a tree: the workflow span, its step attempts, and the LLM calls
// inside them (provider, model, tokens, latency, time to first token, cost, retries,
// failovers). Inputs and outputs are shown as the trace stores them: already redacted.

import { h, duration, pretty } from "./dom.js";

const SHOWN = new Set(["id", "parent", "kind", "name", "start", "end", "duration", "input", "output", "run", "status"]);

function attributes(span) {
  return Object.entries(span).filter(([k, v]) => !SHOWN.has(k) && v !== null && v !== undefined && v !== "")
    .map(([k, v]) => h("span", { class: "attr" }, h("b", {}, k), " ", typeof v === "object" ? JSON.stringify(v) : String(v)));
}

function node(span, children) {
  const kids = children.get(span.id) ?? [];
  return h("li", { class: `span ${span.kind}`, dataset: { kind: span.kind ?? "", span: span.id } },
    h("details", { open: span.kind !== "llm" && span.kind !== "step" ? true : null },
      h("summary", {}, h("span", { class: "kind" }, span.kind ?? "span"), " ", h("strong", {}, span.name ?? span.step ?? span.id),
        span.step ? ` ${span.step}` : "", span.attempt ? ` #${span.attempt}` : "", " ",
        h("span", { class: `badge ${span.status}` }, span.status ?? ""), " ", duration(span.duration)),
      h("div", { class: "attrs" }, attributes(span)),
      span.input !== undefined ? h("details", {}, h("summary", {}, "input"), h("pre", {}, pretty(span.input))) : null,
      span.output !== undefined ? h("details", {}, h("summary", {}, "output"), h("pre", {}, pretty(span.output))) : null),
    kids.length ? h("ul", {}, kids.map((k) => node(k, children))) : null);
}

export function drawTrace(host, spans) {
  const ids = new Set(spans.map((s) => s.id));
  const children = new Map();
  const roots = [];
  for (const span of spans) {
    if (span.parent && ids.has(span.parent)) (children.get(span.parent) ?? children.set(span.parent, []).get(span.parent)).push(span);
    else roots.push(span);
  }
  host.replaceChildren(spans.length ? h("ul", { class: "trace" }, roots.map((r) => node(r, children))) : h("p", { class: "muted" }, "No spans recorded."));
}
