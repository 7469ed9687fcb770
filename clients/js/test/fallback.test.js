// Which transport a watch ends up on when the server is busy, with no server: a fake
// WebSocket whose handshake fails while the server is "busy", and a fake fetch that
// answers SSE with 429 meanwhile (a browser does not say why a socket failed; SSE does).
import { test } from "node:test";
import assert from "node:assert/strict";
import { FlowkitClient } from "../src/index.js";
import { fakeServer, until } from "./helpers.js";

test("auto: a watch whose first socket failed because the server was busy goes back to the socket, not SSE for good", async () => {
  const server = fakeServer();
  let busy = true;
  const sockets = [];
  class FakeSocket {
    constructor(url) {
      this.url = url;
      sockets.push(this);
      const refused = busy;
      setImmediate(() => (refused ? this.onclose?.({ code: 1006, reason: "" }) : this.onopen?.()));
    }
    send() {}
    close() {}
  }
  const fetch = async (url, init) => {
    if (!busy) return server.fetch(url, init);
    const body = JSON.stringify({ error: { code: "too_many_streams", message: "This run's tokens already hold 2 streams open." } });
    return new Response(body, { status: 429, headers: { "Content-Type": "application/json", "Retry-After": "1" } });
  };
  const watch = new FlowkitClient({ baseUrl: "http://flowkit.test", token: "a-run-token", WebSocket: FakeSocket, fetch }).watch("r1");
  try {
    await until(watch, (s) => s.reconnectReason !== null, "the server's refusal over SSE");
    assert.match(watch.state.reconnectReason, /already hold 2 streams/);
    busy = false; // another tab closed its stream
    await until(watch, (s) => s.connection === "open", "a stream once the server has room");
    assert.equal(watch.transport, "websocket", "back on the socket once the server has room");
    assert.equal(sockets.length, 2);
  } finally {
    watch.close();
  }
});
