// Live workers (from their heartbeat announcements), the steps they run, and the queues a
// served workflow routes to that no live worker consumes (its runs would stay queued).
// Polled: presence is a heartbeat, not an event stream.

import { h, fill, duration } from "./dom.js";
import { urls } from "./session.js";

const POLL_MS = 2000;

export function workersView(main, client) {
  const body = h("div", { id: "workers" });
  fill(main, h("h1", {}, "Workers"), body);
  async function poll() {
    try {
      draw(await client.request("GET", "/workers"));
    } catch (error) {
      fill(body, h("p", { class: "error", role: "alert" }, `Could not load workers: ${error.message}`));
    }
    setTimeout(poll, POLL_MS);
  }
  function draw({ workers, running, unconsumed, now }) {
    const busy = {};
    for (const s of running) busy[s.node] = (busy[s.node] ?? 0) + 1;
    fill(body,
      unconsumed.length ? h("div", { id: "unconsumed", class: "warning", role: "alert" }, h("strong", {}, "No live consumer: "),
        unconsumed.map((u) => h("span", { class: "queue", dataset: { queue: u.queue } }, `queue ${u.queue} (${u.workflows.join(", ")}) `)),
        "— its runs stay queued until a worker consumes it.") : null,
      workers.length ? h("table", {}, h("caption", {}, `${workers.length} live worker${workers.length === 1 ? "" : "s"}`),
        h("thead", {}, h("tr", {}, ["Worker", "Queues", "Pool", "Concurrency", "Running", "flowkit", "Last beat"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, workers.map((w) => h("tr", { dataset: { worker: w.name }, class: w.draining ? "draining" : null },
          h("td", {}, w.name),
          // a draining worker (SIGTERM) takes no step; one `flowkit drain` stopped lists no queue
          h("td", {}, w.draining ? h("strong", {}, "draining: takes no step") : (w.queues ?? []).join(", ") || "— (none: drained)"),
          h("td", {}, w.pool ?? "?"),
          h("td", {}, String(w.concurrency ?? "?")), h("td", {}, String(busy[w.name] ?? 0)), h("td", {}, w.flowkit ?? "?"),
          h("td", {}, `${duration(now - w.last_beat)} ago`)))))
        : h("p", { class: "warning", role: "alert" }, "No live worker: start one (celery -A <your app> worker)."),
      h("h2", {}, "Running steps"),
      running.length ? h("table", {}, h("thead", {}, h("tr", {}, ["Run", "Workflow", "Step", "Attempt", "Worker", "Heartbeat"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, running.map((s) => {
          // a lease not renewed in time: its worker died or froze (a killed worker's step
          // was listed as running for as long as no worker came back to restart it)
          const lost = typeof s.lease_expires === "number" && s.lease_expires < now;
          return h("tr", { class: lost ? "lost" : null, dataset: { run: s.run, step: s.step, lost: lost ? "true" : "false" } },
            h("td", {}, h("a", { href: `${urls.ui}/runs/${encodeURIComponent(s.run)}` }, s.run)), h("td", {}, s.workflow),
            h("td", {}, s.step), h("td", {}, String(s.attempt ?? "")), h("td", {}, s.worker),
            h("td", {}, lost ? h("strong", {}, `lost: lease lapsed ${duration(now - s.lease_expires)} ago; the reaper restarts it (beat and a worker must be up)`)
              : "renewed"));
        })))
        : h("p", { class: "muted" }, "No step is running."));
  }
  poll();
}
