// Small DOM helpers for the dashboard. Every piece of run data reaches the page as
// text (textContent, attributes), never as HTML: a run's output is user content.

/** An element: h("td", {class: "x", onclick: f}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Seconds as "850 ms", "12.3 s", "4 min 3 s", "2 h 5 min". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

/** A unix time (seconds) as local date and time. */
export function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : "—";
}

/** A stream id's time ("1733200000000-0" -> seconds). */
export function eventTime(event) {
  if (typeof event.ts === "number") return event.ts;
  const ms = Number(String(event.id ?? "").split("-")[0]);
  return isFinite(ms) ? ms / 1000 : null;
}

export function tokensText(tokens) {
  if (!tokens || typeof tokens !== "object") return "—";
  const total = tokens.total ?? Object.entries(tokens)
    .filter(([k]) => k !== "total").reduce((sum, [, n]) => sum + (typeof n === "number" ? n : 0), 0);
  return total ? String(total) : "—";
}

export function costText(cost) {
  return typeof cost === "number" ? `$${cost.toFixed(cost < 0.01 ? 5 : 3)}` : "—";
}

/** JSON for <pre> blocks (strings as they are). */
export function pretty(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** Run at most once a frame, with the latest arguments: streams of tokens are bursty. */
export function throttle(fn) {
  let pending = null;
  return (...args) => {
    const first = pending === null;
    pending = args;
    if (first) requestAnimationFrame(() => { const a = pending; pending = null; fn(...a); });
  };
}
