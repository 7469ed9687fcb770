// A watch whose storage refuses its saves (sessionStorage's ~5 MB quota) goes on, and
// says so once. No server: a fake fetch serves the SSE stream.
import { test } from "node:test";
import assert from "node:assert/strict";
import { FlowkitClient } from "../src/index.js";
import { fakeServer, until } from "./helpers.js";

test("a save the storage refuses is reported once with console.warn, and the watch goes on", async () => {
  const server = fakeServer();
  const full = {
    getItem: () => null,
    setItem: () => {
      throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
    },
  };
  const warned = [];
  const warn = console.warn;
  console.warn = (...args) => warned.push(args.join(" "));
  try {
    const watch = new FlowkitClient({ baseUrl: "http://flowkit.test", fetch: server.fetch }).watch("r1", { storage: full, transport: "sse" });
    await until(watch, (s) => s.connection === "open", "the stream");
    // a terminal event is saved at once: two of them, two refused saves
    server.send("r1", { id: "1-0", type: "run.failed", run: "r1", error: { message: "x" } });
    server.send("r1", { id: "2-0", type: "run.restarted", run: "r1" });
    server.send("r1", { id: "3-0", type: "run.failed", run: "r1", error: { message: "y" } });
    const state = await until(watch, (s) => s.eventCount === 3, "the three events");
    assert.equal(state.state, "failed");
    watch.close();
    assert.equal(warned.length, 1, `warned: ${JSON.stringify(warned)}`);
    assert.match(warned[0], /could not save run r1 to storage \(QuotaExceededError/);
  } finally {
    console.warn = warn;
  }
});
