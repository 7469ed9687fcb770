// What the integration tests share: the real server's address and key (from the
// pytest wrapper tests/js/test_js_client.py), the test workflows' gates in Redis,
// an in-memory sessionStorage, a TCP proxy that can cut every connection (a real
// network drop), and waiting for a watch's state without sleeping.
import net from "node:net";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import WebSocket from "ws";
import { FlowkitClient } from "../src/index.js";

const run = promisify(execFile);

export const URL_ = process.env.FLOWKIT_URL;
export const API_KEY = process.env.FLOWKIT_API_KEY;
const REDIS_URL = process.env.FLOWKIT_TEST_REDIS_URL;
export const LIVE = Boolean(URL_ && API_KEY && REDIS_URL);
export const SKIP = LIVE ? false : "needs a flowkit server: run through tests/js/test_js_client.py";
export const WAIT = 30_000;

const clients = new Set();

/** A client of the test server; a fast backoff keeps reconnections quick. */
export function client(options = {}) {
  const made = new FlowkitClient({ baseUrl: URL_, token: API_KEY, WebSocket, backoff: { initial: 50, max: 500 }, ...options });
  clients.add(made);
  return made;
}

/** Close every watch the tests opened (run after each test: a failed one leaves none reconnecting). */
export function closeWatches() {
  for (const c of clients) for (const w of [...c.watches]) w.close();
  clients.clear();
}

async function redis(...args) {
  const { stdout } = await run("redis-cli", ["-u", REDIS_URL, ...args]);
  return stdout.trim();
}

/** Block until step `name` of the run waits at its gate (tests/workflows.py's wait_for_gate). */
export async function reachedGate(runId, name) {
  const got = await redis("BLPOP", `waiting:${runId}:${name}`, "20");
  if (!got) throw new Error(`step ${name} of ${runId} never reached its gate`);
}

/** Delete every key of the run, as its retention running out does. */
export async function forgetRun(runId) {
  const keys = (await redis("--scan", "--pattern", `*run:${runId}*`)).split("\n").filter(Boolean);
  if (keys.length) await redis("DEL", ...keys);
}

export function openGate(runId, name) {
  return redis("RPUSH", `gate:${runId}:${name}`, "1");
}

/** sessionStorage's interface over a Map: what a page keeps across a refresh. */
export function memoryStorage() {
  const data = new Map();
  return {
    getItem: (k) => (data.has(k) ? data.get(k) : null),
    setItem: (k, v) => data.set(k, String(v)),
    removeItem: (k) => data.delete(k),
    data,
  };
}

/** Resolves with the watch's state once `predicate(state)` holds (checked now and at every change). */
export function until(watch, predicate, what = "condition", timeout = WAIT) {
  return new Promise((resolve, reject) => {
    let unsubscribe = () => {};
    const timer = setTimeout(() => {
      unsubscribe();
      reject(new Error(`timed out waiting for ${what}; state: ${JSON.stringify(watch.state)}`));
    }, timeout);
    const check = (state) => {
      if (!predicate(state)) return false;
      clearTimeout(timer);
      unsubscribe();
      resolve(state);
      return true;
    };
    if (!check(watch.state)) unsubscribe = watch.subscribe(check);
  });
}

/** Every event id of the run's history, read page by page over REST. */
export async function historyIds(api, runId) {
  const ids = [];
  let after;
  for (;;) {
    const page = await api.events(runId, { after });
    ids.push(...page.events.map((e) => e.id));
    if (!page.events.length) return ids;
    after = page.next;
  }
}

/** A TCP proxy in front of the server; `drop()` resets every connection through it,
 * `refuse(true)` every new one until `refuse(false)`. */
export async function dropProxy(target) {
  const { hostname, port, pathname } = new URL(target);
  const sockets = new Set();
  let refusing = false;
  let refused = 0;
  const refusalWaiters = [];
  const server = net.createServer((inbound) => {
    if (refusing) {
      // a server that is away: the connection is reset before any byte
      inbound.on("error", () => {});
      inbound.resetAndDestroy ? inbound.resetAndDestroy() : inbound.destroy();
      refused += 1;
      for (const w of [...refusalWaiters]) {
        if (refused >= w.n) {
          refusalWaiters.splice(refusalWaiters.indexOf(w), 1);
          w.resolve();
        }
      }
      return;
    }
    const outbound = net.connect(Number(port), hostname);
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {});
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    inbound.on("close", () => outbound.destroy());
    outbound.on("close", () => inbound.destroy());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  let connections = 0;
  server.on("connection", () => (connections += 1));
  return {
    url: `http://127.0.0.1:${server.address().port}${pathname.replace(/\/$/, "")}`,
    get connections() {
      return connections;
    },
    /** Stop passing the server's bytes on, without closing anything: a connection gone silent. */
    freeze() {
      for (const s of sockets) s.pause();
    },
    /** While on, every new connection is reset at once (the server down or restarting). */
    refuse(on) {
      refusing = on;
    },
    /** Resolves once `n` connections were refused since the proxy started. */
    refusals(n) {
      return refused >= n ? Promise.resolve() : new Promise((resolve) => refusalWaiters.push({ n, resolve }));
    },
    drop() {
      for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
    },
    close() {
      this.drop();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Ids strictly increasing: no duplicate and no reordering. */
export function increasing(ids) {
  return ids.every((id, i) => i === 0 || compare(ids[i - 1], id) < 0);
}

function compare(a, b) {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  return am === bm ? (as < bs ? -1 : as > bs ? 1 : 0) : am < bm ? -1 : 1;
}

/** A fetch serving `GET /runs/<id>/events` as an SSE stream the test writes to. */
export function fakeServer() {
  const streams = new Map(); // runId -> the open stream's controller
  const opened = [];
  const fetch = async (url, { signal } = {}) => {
    const runId = decodeURIComponent(new URL(url).pathname.split("/").at(-2));
    const body = new ReadableStream({
      start(controller) {
        streams.set(runId, controller);
        signal?.addEventListener("abort", () => {
          if (streams.get(runId) === controller) streams.delete(runId);
          try {
            controller.error(new DOMException("aborted", "AbortError"));
          } catch {
            /* closed already */
          }
        });
      },
    });
    opened.push(runId);
    return new Response(body.pipeThrough(new TextEncoderStream()), { status: 200, headers: { "Content-Type": "text/event-stream" } });
  };
  return {
    fetch,
    opened,
    send(runId, event) {
      streams.get(runId).enqueue(`id: ${event.id}\ndata: ${JSON.stringify(event)}\n\n`);
    },
  };
}
