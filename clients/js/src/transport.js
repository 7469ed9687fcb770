// The two ways a browser follows a run's stream: the WebSocket relay
// (/runs/<id>/stream) and Server-Sent Events read with fetch (/runs/<id>/events).
// SSE goes through fetch rather than EventSource because EventSource cannot send
// an Authorization header nor be resumed from a cursor of our choosing, and it
// reconnects on its own; the watch owns reconnection, so both transports here
// make exactly one connection and report how it ended.
import { TOKEN_EXPIRED } from "./tokens.js";

/** The close code of a socket whose run token expired (flowkit.api.ws). */
export const TOKEN_EXPIRED_CLOSE = 4001;
/** The close code of a stream whose run no longer exists (its retention ran out). */
export const NOT_FOUND_CLOSE = 4004;

/**
 * @typedef {object} TransportHandlers
 * @property {() => void} onOpen
 * @property {(event: object) => void} onEvent
 * @property {(end: TransportEnd) => void} onEnd  called once, however the connection ended
 * @property {(status: object) => void} [onStatus]  the relay's own state, not an event:
 *   `{status: "degraded", since, message}` while the server cannot read the run's events
 *   from Redis (they arrive late, none is lost), `{status: "live"}` when it can again
 *
 * @typedef {object} TransportEnd
 * @property {boolean} opened   the connection was established before it ended
 * @property {boolean} clean    the server ended it on purpose (WS close 1000, SSE body end)
 * @property {boolean} restart  the server is restarting: reconnect even after a terminal event
 * @property {number} [status]  an HTTP status that refused the connection (SSE)
 * @property {string|number} [code]  the API's error code with that status (SSE), the close code (WS)
 * @property {string} [message] why, for people
 * @property {boolean} [finished]  the run ended at the event the stream resumed from (SSE's 204)
 *
 * A stream opened with a run token ends when the token expires: the socket closes with
 * code 4001, SSE sends `event: token_expired`. Both end as the refusal of that token would
 * (`status` 401, `code` "token_expired"), so the watch asks for a fresh one and goes on.
 */

/** Resolve the client's base URL (maybe relative, e.g. "/flowkit") to an absolute URL. */
export function absoluteUrl(baseUrl, path) {
  const base = String(baseUrl ?? "").replace(/\/+$/, "");
  const here = globalThis.location?.href;
  return new URL(base + path, here ?? "http://localhost/").toString();
}

/**
 * One WebSocket connection to a run's relay, from the event after `after`.
 * The token goes in `?token=`: a browser's WebSocket cannot send headers (the API
 * accepts run tokens there; a cookie session needs nothing).
 * A page cannot see protocol pings, so every third of `idleTimeout` the socket sends
 * `{"ping": n}` (the relay answers `{"pong": n}`); no message at all for `idleTimeout`
 * is a connection that died without a reset, reported as a network failure.
 */
export function openWebSocket({ baseUrl, runId, after, token, WebSocket: Socket, idleTimeout }, handlers) {
  const url = new URL(absoluteUrl(baseUrl, `/runs/${encodeURIComponent(runId)}/stream`));
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (after) url.searchParams.set("after", after);
  if (token) url.searchParams.set("token", token);
  url.searchParams.set("status", "true"); // be told when the relay cannot read Redis
  let opened = false;
  let ended = false;
  let idle = null;
  let pinger = null;
  const stopTimers = () => {
    clearTimeout(idle);
    clearInterval(pinger);
  };
  const end = (detail) => {
    if (ended) return;
    ended = true;
    stopTimers();
    handlers.onEnd({ opened, ...detail });
  };
  let socket;
  try {
    socket = new Socket(url.toString());
  } catch (error) {
    queueMicrotask(() => end({ clean: false, restart: false, message: String(error) }));
    return { close() {} };
  }
  const alive = () => {
    clearTimeout(idle);
    if (!idleTimeout) return;
    idle = setTimeout(() => {
      end({ clean: false, restart: false, message: `no data for ${idleTimeout} ms` });
      try {
        socket.close(); // whatever the dead connection does now is not reported
      } catch {
        /* already closing */
      }
    }, idleTimeout);
  };
  socket.onopen = () => {
    opened = true;
    alive();
    if (idleTimeout) {
      let n = 0;
      pinger = setInterval(() => {
        try {
          socket.send(JSON.stringify({ ping: ++n }));
        } catch {
          /* closing: onclose reports it */
        }
      }, Math.max(1, Math.floor(idleTimeout / 3)));
    }
    handlers.onOpen();
  };
  socket.onmessage = (message) => {
    if (ended) return;
    alive();
    let event;
    try {
      event = JSON.parse(typeof message.data === "string" ? message.data : String(message.data));
    } catch {
      return; // not an event: nothing the relay sends, ignored
    }
    if (event && typeof event === "object" && !("id" in event)) {
      if ("status" in event) handlers.onStatus?.(event);
      if ("pong" in event || "status" in event) return;
    }
    handlers.onEvent(event);
  };
  socket.onerror = () => {}; // onclose follows with the code
  socket.onclose = (close) => {
    if (close.code === TOKEN_EXPIRED_CLOSE) {
      end({ clean: false, restart: false, status: 401, code: TOKEN_EXPIRED, message: close.reason });
      return;
    }
    if (close.code === NOT_FOUND_CLOSE) {
      // the run is gone (its retention ran out): a 404, as a reconnect's handshake would be
      // answered; a watch without a token reconnected to it for ever
      const message = close.reason.replace(/^not_found: /, "");
      end({ clean: false, restart: false, status: 404, code: "not_found", message });
      return;
    }
    end({ clean: close.code === 1000, restart: close.code === 1012, code: close.code, message: close.reason });
  };
  return {
    close() {
      if (ended) return;
      ended = true; // our own close is not reported
      stopTimers();
      try {
        socket.close(1000);
      } catch {
        /* already closing */
      }
    },
  };
}

/**
 * One SSE response from the run's events endpoint, read with fetch from the event
 * after `after` (sent as Last-Event-ID, the header SSE defines for resuming).
 */
export function openEventStream({ baseUrl, runId, after, token, credentials, fetch: fetchFn, idleTimeout }, handlers) {
  const controller = new AbortController();
  let opened = false;
  let ended = false;
  let idle = null;
  const end = (detail) => {
    if (ended) return;
    ended = true;
    clearTimeout(idle);
    handlers.onEnd({ opened, restart: false, ...detail });
  };
  // The server writes a ping comment every ping interval: silence for longer than
  // idleTimeout is a connection that died without a reset (a sleeping laptop, a NAT that
  // forgot it), which fetch would wait on forever.
  const stillAlive = () => {
    clearTimeout(idle);
    if (!idleTimeout || ended) return; // closed: data already read is no sign of life to wait on
    idle = setTimeout(() => {
      end({ clean: false, message: `no data for ${idleTimeout} ms` });
      controller.abort();
    }, idleTimeout);
  };
  const headers = { Accept: "text/event-stream" };
  if (after) headers["Last-Event-ID"] = after;
  if (token) headers.Authorization = `Bearer ${token}`;
  const url = absoluteUrl(baseUrl, `/runs/${encodeURIComponent(runId)}/events?status=true`);
  (async () => {
    const response = await fetchFn(url, { headers, credentials, signal: controller.signal, cache: "no-store" });
    if (!response.ok) {
      let message = response.statusText;
      let code;
      try {
        const error = (await response.json()).error;
        message = error?.message ?? message;
        code = error?.code;
      } catch {
        /* not the API's JSON error */
      }
      const retryAfter = Number(response.headers.get("Retry-After")) || undefined;
      end({ clean: false, status: response.status, code, message, retryAfter });
      return;
    }
    if (response.status === 204) {
      // resumed from the ended run's last event: nothing more will come
      end({ clean: true, finished: true });
      return;
    }
    opened = true;
    handlers.onOpen();
    stillAlive();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done || ended) break; // ended: closed by the watch (or timed out), stop reading
      stillAlive();
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        if (/^event: ?token_expired\r?$/m.test(block)) {
          const message = parseSseBlock(block)?.error?.message ?? "This run token has expired.";
          end({ clean: false, status: 401, code: TOKEN_EXPIRED, message });
          controller.abort();
          return;
        }
        if (/^event: ?not_found\r?$/m.test(block)) {
          // the run is gone (its retention ran out): it was handed on as a run event
          const message = parseSseBlock(block)?.error?.message ?? "This run no longer exists.";
          end({ clean: false, status: 404, code: "not_found", message });
          controller.abort();
          return;
        }
        const event = parseSseBlock(block);
        if (/^event: ?status\r?$/m.test(block)) {
          if (event && !ended) handlers.onStatus?.(event);
          continue;
        }
        if (/^event: ?(?!message\r?$)/m.test(block)) continue; // no run event: none we know
        if (event && !ended) handlers.onEvent(event);
      }
    }
    end({ clean: true });
  })().catch((error) => end({ clean: false, message: String(error?.message ?? error) }));
  return {
    close() {
      ended = true;
      clearTimeout(idle);
      controller.abort();
    },
  };
}

/** One SSE message block (lines of `field: value`) as an event, or null (a ping). */
export function parseSseBlock(block) {
  let id = null;
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  const event = JSON.parse(data.join("\n"));
  if (id && !event.id) event.id = id;
  return event;
}
