// The client a page talks to: REST calls (start, answer, cancel, retry, reads)
// and watches that follow one run's stream. A watch delivers every event once,
// in order: it keeps the last event id (in storage too, so a refreshed page
// resumes where it was), ignores anything at or before it, reconnects with
// backoff from it, and falls back from WebSocket to SSE when a socket cannot be
// opened (no WebSocket, a proxy that refuses upgrades, an API key the socket
// cannot carry); a watch whose socket opened once retries the socket when the server
// is away or busy. The server ends a stream at the run's latest terminal event only,
// so a watch reopened after a retry gets the rest.

import { foldEvent, initialRunState, compareEventIds, isTerminal, packState, unpackState } from "./fold.js";
import { openWebSocket, openEventStream, absoluteUrl } from "./transport.js";
import { TokenSource, TOKEN_EXPIRED } from "./tokens.js";

/** An error answered by the API: `{"error": {code, message, fields}}`, with its status. */
export class FlowkitError extends Error {
  constructor(status, code, message, fields = {}) {
    super(message);
    this.name = "FlowkitError";
    this.status = status;
    this.code = code;
    this.fields = fields;
  }
}

const STORAGE_PREFIX = "flowkit.run.";
/** The longest a watch's storage lags its state (one save per this many ms). */
const PERSIST_MS = 1000;

/** The key a watch persists a run under in `storage` (e.g. sessionStorage). */
export function storageKey(runId) {
  return STORAGE_PREFIX + runId;
}

function restore(storage, runId) {
  if (!storage) return null;
  try {
    const saved = JSON.parse(storage.getItem(storageKey(runId)) ?? "null");
    return saved && saved.state && saved.state.runId === runId ? unpackState(saved.state) : null;
  } catch {
    return null; // unreadable: start from the beginning, the fold drops nothing twice
  }
}

export class FlowkitClient {
  /**
   * @param {import("../index").FlowkitClientOptions} [options]
   */
  constructor(options = {}) {
    this.baseUrl = options.baseUrl ?? "/flowkit";
    /** The `token` option as given: a string, or a function giving fresh ones. */
    this.token = options.token;
    this.tokens = new TokenSource(options.token);
    this.credentials = options.credentials ?? "same-origin";
    this.fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.backoff = { initial: 500, max: 15000, ...(options.backoff ?? {}) };
    /** ms without data before reconnecting: SSE gets the server's ping comments every ping
     * interval, a WebSocket pongs to the ping messages it sends every third of this. */
    this.idleTimeout = options.idleTimeout ?? 60000;
    /** @type {Set<RunWatch>} */
    this.watches = new Set();
  }

  /** Follow a run's events and folded state. */
  watch(runId, options = {}) {
    const w = new RunWatch(this, runId, options);
    this.watches.add(w);
    return w;
  }

  async request(method, path, { body, headers = {}, token } = {}) {
    const tokens = token === undefined ? this.tokens : new TokenSource(token);
    let used = await tokens.get();
    let answer = await this.send(method, path, body, headers, used);
    if (answer.status === 401 && answer.data?.error?.code === TOKEN_EXPIRED && tokens.refreshable) {
      tokens.expire(used); // the function gives a fresh one: ask once more
      used = await tokens.get();
      answer = await this.send(method, path, body, headers, used);
    }
    if (!answer.ok) {
      const error = answer.data?.error ?? {};
      throw new FlowkitError(answer.status, error.code ?? "http_error", error.message ?? `${method} ${path}: HTTP ${answer.status}`, error.fields ?? {});
    }
    return answer.data;
  }

  /** One HTTP exchange: its status and JSON body (null when there is none). */
  async send(method, path, body, headers, token) {
    const sent = { Accept: "application/json", ...headers };
    if (token) sent.Authorization = `Bearer ${token}`;
    if (body !== undefined) sent["Content-Type"] = "application/json";
    const url = absoluteUrl(this.baseUrl, path);
    let response;
    try {
      response = await this.fetch(url, {
        method,
        headers: sent,
        credentials: this.credentials,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      // fetch rejects with a bare TypeError ("fetch failed") when nothing answers
      const error = new FlowkitError(0, "unreachable", `${method} ${url}: no answer from the server (${err?.message ?? err}): is it running, and is baseUrl right?`);
      error.cause = err;
      throw error;
    }
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    return { ok: response.ok, status: response.status, data };
  }

  /** Start a run of `workflow`; the API's JSON (id, state, token, urls...). */
  start(workflow, input = {}, { idempotencyKey, priority, delay } = {}) {
    const query = new URLSearchParams();
    if (priority !== undefined) query.set("priority", String(priority));
    if (delay !== undefined) query.set("delay", String(delay));
    // "" is sent, and refused (400): a key that came out empty must not start a run per retry
    const headers = idempotencyKey != null ? { "Idempotency-Key": idempotencyKey } : {};
    const qs = query.toString() ? `?${query}` : "";
    return this.request("POST", `/workflows/${encodeURIComponent(workflow)}/runs${qs}`, { body: input, headers });
  }

  /** Answer a run's `wait_for_input(name)`; the value is the JSON body. `step`: the key of
   *  the step whose wait it answers (a wait's `step` in the fold's `waits`), which several
   *  steps waiting under one name at once (fan-out items, parallel branches) need. */
  answer(runId, name, value, { step } = {}) {
    const qs = step !== undefined ? `?${new URLSearchParams({ step })}` : "";
    return this.request("POST", `/runs/${encodeURIComponent(runId)}/input/${encodeURIComponent(name)}${qs}`, { body: value });
  }

  cancel(runId) {
    return this.request("POST", `/runs/${encodeURIComponent(runId)}/cancel`);
  }

  /** Retry a failed run from its failed step; this client's ended watches of it follow on. */
  async retry(runId) {
    const run = await this.request("POST", `/runs/${encodeURIComponent(runId)}/retry`);
    for (const w of this.watches) if (w.runId === runId) w.reconnect();
    return run;
  }

  /** A fresh run token for the run: `{run_id, token, token_expires_in}` (an API key's or
   * your app's session's; a run token may not make another). What a page watching over a
   * WebSocket needs, as `token: () => api.runToken(id).then((t) => t.token)`. */
  runToken(runId) {
    return this.request("POST", `/runs/${encodeURIComponent(runId)}/token`);
  }

  /** The run's record. */
  run(runId) {
    return this.request("GET", `/runs/${encodeURIComponent(runId)}`);
  }

  /** One page of the run's history: `{events, next, done}`. */
  events(runId, { after, limit } = {}) {
    const query = new URLSearchParams();
    if (after) query.set("after", after);
    if (limit) query.set("limit", String(limit));
    const qs = query.toString() ? `?${query}` : "";
    return this.request("GET", `/runs/${encodeURIComponent(runId)}/events${qs}`);
  }
}

export class RunWatch {
  constructor(client, runId, options = {}) {
    this.client = client;
    this.runId = runId;
    this.storage = options.storage ?? null;
    this.tokens = options.token !== undefined ? new TokenSource(options.token) : client.tokens;
    this.transportChoice = options.transport ?? "auto";
    this.backoff = { ...client.backoff, ...(options.backoff ?? {}) };
    this.idleTimeout = options.idleTimeout ?? client.idleTimeout;
    const restored = restore(this.storage, runId);
    let state = restored ?? initialRunState(runId);
    if (options.lastEventId && compareEventIds(options.lastEventId, state.lastEventId) > 0) {
      state = { ...state, lastEventId: options.lastEventId };
    }
    /** @type {import("../index").RunState} */
    this.state = { ...state, connection: "connecting" };
    /** How many times a connection was opened; the transport in use. */
    this.connects = 0;
    this.transport = this.pickTransport();
    /** Why the watch stopped for good (an HTTP refusal), or null. */
    this.failure = null;
    /** A socket of this watch opened once: a later failed handshake is the server down,
     * restarting or busy, not a network that cannot carry WebSockets. */
    this.socketOpened = false;
    /** The watch left a socket that never opened for SSE (see ended()). */
    this.fellBack = false;
    /** A failed save to storage was reported (console.warn, once per watch). */
    this.saveWarned = false;
    this.subscribers = new Set();
    this.eventListeners = new Set();
    this.retries = 0;
    this.timer = null;
    /** The pending save to storage (at most one per PERSIST_MS). */
    this.persistTimer = null;
    this.current = null;
    this.stopped = false;
    this.reopen = false;
    /** Fresh tokens asked for since a connection last opened (one per expiry, not a loop). */
    this.refreshes = 0;
    this.connect();
  }

  pickTransport() {
    if (this.transportChoice === "sse") return "sse";
    if (this.transportChoice === "websocket") return "websocket";
    return this.client.WebSocket ? "websocket" : "sse";
  }

  /** Called with the state after every folded event and every connection change. */
  subscribe(listener) {
    this.subscribers.add(listener);
    return () => this.subscribers.delete(listener);
  }

  /** Called with every raw event, once, in order. */
  onEvent(listener) {
    this.eventListeners.add(listener);
    return () => this.eventListeners.delete(listener);
  }

  setState(state) {
    this.state = state;
    for (const listener of [...this.subscribers]) listener(state);
  }

  setConnection(connection) {
    // a new connection's relay says again whether it is degraded: forget the last one's word
    if (this.state.connection !== connection) {
      this.setState({ ...this.state, connection, degraded: null, reconnectReason: connection === "open" ? null : this.state.reconnectReason ?? null });
    }
  }

  /** Save soon: at most once per PERSIST_MS, and at once at the run's end. Saving the
   * whole state on every event was quadratic: 6,000 events took 15.8 s against 2.7 s. A
   * reload between two saves resumes from the last saved id; what follows is sent again
   * and folded once (event ids are compared). */
  persistSoon() {
    if (!this.storage) return;
    if (isTerminal(this.state)) {
      this.persistNow();
      return;
    }
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = null;
      this.persist();
    }, PERSIST_MS);
  }

  persistNow() {
    if (this.persistTimer) clearTimeout(this.persistTimer);
    this.persistTimer = null;
    this.persist();
  }

  persist() {
    if (!this.storage) return;
    try {
      // each step's rawChunks only: its text and chunks are made from them on restore
      this.storage.setItem(storageKey(this.runId), JSON.stringify({ state: packState({ ...this.state, connection: "closed" }) }));
    } catch (error) {
      // storage full (sessionStorage holds about 5 MB) or refused: the watch goes on, and a
      // refresh resumes from the last save that worked; said once, not once a second
      if (!this.saveWarned) {
        this.saveWarned = true;
        globalThis.console?.warn?.(`flowkit: could not save run ${this.runId} to storage (${error?.name ?? "Error"}: ${error?.message ?? error}); a refresh resumes from an earlier save`);
      }
    }
  }

  connect() {
    if (this.stopped) return;
    this.timer = null;
    if (!this.tokens.ready) {
      this.fetchToken();
      return;
    }
    this.setConnection(this.connects === 0 ? "connecting" : "reconnecting");
    // a listener told "reconnecting" may close the watch (the dashboard does, once its run
    // ended): the socket opened anyway, and its "open" showed an ended run as live
    if (this.stopped) return;
    this.connects += 1;
    this.delivered = 0; // events this connection delivered
    const token = this.tokens.value;
    const options = {
      baseUrl: this.client.baseUrl,
      runId: this.runId,
      after: this.state.lastEventId,
      token,
      credentials: this.client.credentials,
      fetch: this.client.fetch,
      WebSocket: this.client.WebSocket,
      idleTimeout: this.idleTimeout,
    };
    const handlers = {
      onOpen: () => {
        if (this.stopped) return;
        this.refreshes = 0;
        if (this.transport === "websocket") this.socketOpened = true;
        this.setConnection("open");
      },
      onEvent: (event) => this.receive(event),
      onStatus: (status) => this.relayStatus(status),
      onEnd: (end) => this.ended({ ...end, token }),
    };
    this.current = this.transport === "websocket" ? openWebSocket(options, handlers) : openEventStream(options, handlers);
  }

  /** The token function's answer first, then the connection; a function that fails is
   * retried with the backoff, as a connection that failed would be, unless it failed with
   * this API's refusal (a FlowkitError 401, 403, 404 or 410: `api.runToken(id)` of a run
   * that is not there), which stops the watch with it, as a refused connection does. */
  fetchToken() {
    this.setConnection(this.connects === 0 ? "connecting" : "reconnecting");
    if (this.stopped) return; // closed by a listener told so: no token to fetch
    const pending = { close() {} };
    this.current = pending;
    this.tokens.get().then(
      () => {
        if (this.current !== pending) return; // closed, dropped or reconnected meanwhile
        this.current = null;
        this.connect();
      },
      (error) => {
        if (this.current !== pending) return;
        const refused = error instanceof FlowkitError && [401, 403, 404, 410].includes(error.status)
          ? { status: error.status, code: error.code, message: error.message } : {};
        this.ended({ opened: false, clean: false, restart: false, tokenFailed: true, message: `token: ${error?.message ?? error}`, ...refused });
      },
    );
  }

  /** The relay's word on itself: "degraded" while the server cannot read the run's
   * events (they arrive late, none is lost), "open" again when it can. */
  relayStatus(status) {
    if (this.stopped || this.current === null) return;
    if (status?.status === "degraded") {
      this.setState({ ...this.state, connection: "degraded", degraded: { since: status.since, message: status.message } });
    } else if (status?.status === "live" && this.state.connection === "degraded") {
      this.setState({ ...this.state, connection: "open", degraded: null });
    }
  }

  receive(event) {
    if (this.stopped || !event || typeof event !== "object") return;
    if (event.id && this.state.lastEventId && compareEventIds(event.id, this.state.lastEventId) <= 0) {
      return; // already delivered (a resend across a reconnect)
    }
    this.retries = 0; // the connection delivers: a later drop starts the backoff over
    this.delivered += 1;
    const state = foldEvent(this.state, event);
    this.state = state;
    this.persistSoon();
    for (const listener of [...this.eventListeners]) listener(event);
    this.setState(this.state);
  }

  ended(end) {
    this.current = null;
    if (this.stopped) return;
    if (end.finished) {
      // the server says the run ended at the last event this watch has (SSE's 204)
      this.setConnection("closed");
      return;
    }
    if (end.status === 401 && end.code === TOKEN_EXPIRED && this.tokens.refreshable && this.refreshes === 0) {
      this.refreshes += 1; // a fresh token refused as expired too stops the watch below
      this.tokens.expire(end.token);
      this.transport = this.pickTransport(); // a socket refused for the old token may open now
      this.connect();
      return;
    }
    // ... and a socket that opened before: its token may have expired since (the watch
    // page's link), which a fall back to SSE used to say and a socket retried for ever; a
    // watch without a token is checked too (a session the host app ended: its 401 was
    // retried for ever)
    const checkable = this.tokens.refreshable || this.transportChoice === "websocket" || this.socketOpened;
    if (!end.opened && !end.checked && !end.tokenFailed && checkable && this.transport === "websocket") {
      this.checkRefusal(end); // was it the token? A browser does not say why a socket failed
      return;
    }
    if (!end.opened && !end.tokenFailed && this.transport === "websocket" && this.transportChoice === "auto" && !this.socketOpened) {
      this.transport = "sse"; // no socket of this watch ever opened: follow over SSE from now on
      this.fellBack = true;
      this.connect();
      return;
    }
    if (this.fellBack && this.transport === "sse" && !end.opened && !end.tokenFailed && (!end.status || end.status === 429 || end.status === 503)) {
      // SSE cannot open either: the server is away or busy (429 too_many_streams, 503),
      // which may be all that stopped the socket: the next try is a socket again
      this.transport = "websocket";
      this.fellBack = false;
    }
    if (end.status && [400, 401, 403, 404, 410].includes(end.status)) {
      this.failure = { status: end.status, message: end.message ?? "", code: end.code ?? null };
      this.setState({ ...this.state, connection: "closed", failure: this.failure });
      return;
    }
    if (end.status === 429 || end.status === 503) {
      // the server said why and when to come back (too many streams of this run or caller
      // open, a server restarting): wait that long, and say why meanwhile
      const seconds = end.retryAfter > 0 ? end.retryAfter : 5;
      this.retries += 1;
      this.setState({ ...this.state, connection: "reconnecting", reconnectReason: end.message || null });
      this.timer = setTimeout(() => this.connect(), seconds * 1000 * (1 + Math.random() / 4));
      return;
    }
    const reopen = this.reopen;
    this.reopen = false;
    if (end.opened && !end.restart && isTerminal(this.state) && !reopen) {
      // The server ends the stream at the run's latest terminal event: a clean close there is
      // the end. An unclean one (a drop; or werkzeug's dev server, which writes after
      // flask-sock's close frame, so Chromium reports 1006) is checked by one more connection:
      // one that delivers nothing and closes means nothing came after (a retried run's
      // earlier run.failed is followed by more).
      if (end.clean || this.delivered === 0) {
        this.setConnection("closed");
        return;
      }
      this.connect();
      return;
    }
    const { initial, max } = this.backoff;
    const delay = Math.min(max, initial * 2 ** this.retries) * (0.5 + Math.random() / 2);
    this.retries += 1;
    this.setConnection("reconnecting");
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** A browser hides why a WebSocket handshake failed: the same token, sent as the socket
   * sends it (`?token=`), on one REST call tells an expired token (then refreshed, as any
   * "token_expired") and a token the socket refuses (an API key: `?token=` takes run tokens
   * only) from anything else (the connection's end as it was). Without it, a watch on
   * `transport: "websocket"` that reconnected after its token expired retried the dead token
   * for ever, and one given an API key retried it for ever without saying why. */
  checkRefusal(end) {
    const pending = { close() {} };
    this.current = pending;
    const settle = (answer) => {
      if (this.current !== pending) return; // closed, dropped or reconnected meanwhile
      const status = answer?.status;
      const error = answer?.data?.error ?? {};
      if (status === 401 && error.code === TOKEN_EXPIRED) {
        this.ended({ ...end, checked: true, status: 401, code: TOKEN_EXPIRED });
      } else if ([401, 403, 404, 410].includes(status)) {
        const hint = status === 401 && end.token && this.transportChoice === "websocket"
          ? " (the WebSocket carries its token as ?token=, which takes run tokens only: an API key needs transport \"auto\" or \"sse\")"
          : "";
        this.ended({ ...end, checked: true, status, code: error.code ?? null, message: `${error.message ?? `HTTP ${status}`}${hint}` });
      } else {
        this.ended({ ...end, checked: true });
      }
    };
    const query = end.token ? `?token=${encodeURIComponent(end.token)}` : "";
    this.client.send("GET", `/runs/${encodeURIComponent(this.runId)}${query}`, undefined, {}, undefined).then(settle, () => settle(null));
  }

  /** Open the stream again from the last event id (after a retry, or to go on after closed). */
  reconnect() {
    if (this.stopped) return;
    this.retries = 0;
    if (this.current) {
      this.reopen = true; // a stream ending now (the old terminal event) is followed by another
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.connect();
  }

  /** Cut the current connection as a network failure would: the watch reconnects on its own. */
  drop() {
    if (!this.current) return;
    const current = this.current;
    this.current = null;
    current.close();
    this.ended({ opened: true, clean: false, restart: false, message: "dropped" });
  }

  /** Stop following; the persisted state stays for a later watch. */
  close() {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.persistTimer) this.persistNow();
    this.current?.close();
    this.current = null;
    this.client.watches.delete(this);
    this.setConnection("closed");
  }
}
