// Types of @flowkit/client (the package is plain ESM; these describe its public API).

/** One event of a run's stream: `{id, type, ts, run, ...}` plus `step`/`attempt` for step events. */
export interface FlowkitEvent {
  id: string;
  type: string;
  ts?: number;
  run?: string;
  step?: string;
  attempt?: number;
  [field: string]: unknown;
}

export type RunStateName = "scheduled" | "queued" | "running" | "waiting" | "succeeded" | "failed" | "cancelled";
/** "degraded": connected, but the server cannot read the run's events from Redis (they arrive late, none is lost). */
export type Connection = "connecting" | "open" | "degraded" | "reconnecting" | "closed";
/** `cancelled`: the step was open when its run was cancelled (its worker stops it). */
export type StepStatus = "pending" | "running" | "retrying" | "waiting" | "completed" | "failed" | "cancelled";

export interface StepState {
  key: string;
  component: string | null;
  status: StepStatus;
  /** The highest attempt number seen. */
  attempts: number;
  /** The step's output, once completed. */
  output: unknown;
  /** The streamed chunks of attempts not superseded, joined as text (non-strings as JSON). */
  text: string;
  /** The streamed chunks of attempts not superseded, as sent. */
  chunks: unknown[];
  /** Internal: the chunks with their attempt numbers, and the sub-step attempts they came
   *  from (what a later supersession filters). */
  rawChunks: { attempt: number; chunk: unknown; subSteps?: string[] }[];
  progress: { message: string | null; fraction: number | null; eta: number | null } | null;
  error: { type?: string; message?: string; [k: string]: unknown } | null;
  startedAt: number | null;
  endedAt: number | null;
  duration: number | null;
  tokens: Record<string, number> | null;
  waiting: boolean;
}

/** One open wait of a run: its `run.waiting` event's fields, and `opened`, that event's id
 *  (a wait opened again, its answer refused with `refused: {answer, errors, message}`, has a
 *  new one). */
export interface Wait {
  kind: string; name?: string; prompt?: string; expires_at?: number; step?: string;
  opened?: string | null;
  refused?: { answer?: unknown; errors?: Record<string, unknown>; message?: string };
  [k: string]: unknown;
}

export interface RunState {
  runId: string | null;
  workflow: string | null;
  /** null until the first event arrives. */
  state: RunStateName | null;
  steps: Record<string, StepState>;
  /** Step keys in first-seen order. */
  order: string[];
  output: unknown;
  error: { type?: string; message?: string; step?: string | null; [k: string]: unknown } | null;
  /** What a waiting run waits for: `{kind, name, prompt?, expires_at?, step, ...}` (the
   *  latest of `waits`). */
  waiting: Wait | null;
  /** Every wait open at once (fan-out items each asking a person), oldest first. */
  waits: Wait[];
  /** Why a queued run is held back (a concurrency key), or null. */
  held: string | null;
  lastEventId: string | null;
  connection: Connection;
  /** While `connection` is "degraded": since when (unix seconds) and the server's words. */
  degraded: { since: number; message: string } | null;
  /** While `connection` is "reconnecting" because the server refused the stream for now
   *  (429 `too_many_streams`, 503): its words; the watch comes back after its Retry-After. */
  reconnectReason: string | null;
  /** LLM token usage summed over completed steps, by kind. */
  tokens: Record<string, number>;
  cost: number | null;
  /** "step#attempt" keys of attempts whose chunks are dropped. */
  superseded: Record<string, true>;
  /** Sub-step attempts ("<key>@<number>") that failed and ran again in place: chunks whose
   *  `sub_steps` name one are dropped. */
  supersededSubSteps: Record<string, true>;
  /** "step#attempt" keys of attempts that paused (run.waiting): a later attempt of the step
   *  keeps their chunks (a resumed attempt does not send again what it replays). */
  paused: Record<string, true>;
  eventCount: number;
  /** Set when the server refused the stream for good (401, 403, 404...). */
  failure?: { status: number; message: string; code?: string | number | null };
}

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export interface Backoff {
  /** First reconnection delay in ms (default 500). */
  initial?: number;
  /** Longest delay in ms (default 15000). */
  max?: number;
}

/** A token, or a function giving one (called again when the one it gave has expired). */
export type TokenOption = string | (() => string | Promise<string>);

export interface FlowkitClientOptions {
  /** Where the flowkit blueprint is mounted, e.g. "/flowkit" or "https://api.example.com/flowkit". */
  baseUrl?: string;
  /** An API key or run token: sent as `Authorization: Bearer` (and as `?token=` on a WebSocket, which takes run tokens only). A function gives tokens: called before the first request or connection, and again when the server answers that the token sent has expired (`token_expired`). */
  token?: TokenOption;
  /** fetch's credentials mode for cookie sessions (default "same-origin"). */
  credentials?: RequestCredentials;
  /** A WebSocket constructor (Node 20 has none: e.g. the `ws` package). */
  WebSocket?: unknown;
  fetch?: typeof fetch;
  backoff?: Backoff;
  /** ms without data before a connection counts as dead and is reopened (default 60000). SSE: keep it above the server's ping interval; WebSocket: the client sends a ping message every third of it and the relay answers. 0 turns the watchdog off. */
  idleTimeout?: number;
}

export interface WatchOptions {
  /** Resume after this event id (storage's, if later, wins). */
  lastEventId?: string;
  /** Persists the last event id and folded state per run, so a refresh resumes. */
  storage?: StorageLike | null;
  /** "auto" (default): WebSocket, falling back to SSE when a socket cannot open. */
  transport?: "auto" | "websocket" | "sse";
  /** A token for this watch only (e.g. the run token a start returned), or a function giving fresh ones (e.g. from your app's endpoint minting `FlowKit.run_token`). */
  token?: TokenOption;
  backoff?: Backoff;
  idleTimeout?: number;
}

export declare class RunWatch {
  readonly client: FlowkitClient;
  readonly runId: string;
  /** The storage given (the folded state is saved there), or null. */
  readonly storage: StorageLike | null;
  /** The `transport` option as given ("auto" by default). */
  readonly transportChoice: "auto" | "websocket" | "sse";
  /** The client's backoff with this watch's `backoff` over it. */
  readonly backoff: Required<Backoff>;
  /** ms without data before a connection is reopened; 0: never. */
  readonly idleTimeout: number;
  readonly state: RunState;
  /** "websocket" or "sse": the transport in use now. */
  readonly transport: "websocket" | "sse";
  /** Connections opened so far. */
  readonly connects: number;
  readonly failure: { status: number; message: string; code?: string | number | null } | null;
  subscribe(listener: (state: RunState) => void): () => void;
  onEvent(listener: (event: FlowkitEvent) => void): () => void;
  /** Open the stream again from the last event id (e.g. after a retry). */
  reconnect(): void;
  /** Cut the connection as a network failure would; the watch reconnects by itself. */
  drop(): void;
  close(): void;
}

export declare class FlowkitError extends Error {
  constructor(status: number, code: string, message: string, fields?: Record<string, string[]>);
  /** The HTTP status; 0 when the server did not answer (`code` "unreachable"). */
  status: number;
  code: string;
  fields: Record<string, string[]>;
}

export interface RunRecord {
  id: string;
  workflow: string;
  state: RunStateName;
  token?: string;
  urls: Record<string, string>;
  [field: string]: unknown;
}

/** Where a client or watch gets its tokens: the `token` option, asked again when expired. */
export interface TokenSource {
  /** The token option is a function (a fresh token can be asked for). */
  readonly refreshable: boolean;
  /** A token (or none) is at hand without calling the function. */
  readonly ready: boolean;
  readonly value: string | undefined;
  /** The token to send; a function is called once at a time. */
  get(): Promise<string | undefined>;
  /** The server refused `used` as expired: the next `get()` asks the function again. */
  expire(used: string | undefined): void;
}

export declare class FlowkitClient {
  constructor(options?: FlowkitClientOptions);
  readonly baseUrl: string;
  /** The `token` option as given: a string, or a function giving fresh ones. */
  readonly token: TokenOption | undefined;
  readonly tokens: TokenSource;
  readonly credentials: RequestCredentials;
  readonly fetch: typeof fetch;
  /** The WebSocket constructor used (undefined or null: the watches follow over SSE). */
  readonly WebSocket: unknown;
  /** The backoff option over the defaults (500 ms, 15000 ms). */
  readonly backoff: Required<Backoff>;
  readonly idleTimeout: number;
  /** The watches this client made that are not closed yet. */
  readonly watches: Set<RunWatch>;
  watch(runId: string, options?: WatchOptions): RunWatch;
  start(workflow: string, input?: unknown, options?: { idempotencyKey?: string; priority?: number; delay?: number }): Promise<RunRecord & { created: boolean; token: string; token_expires_in: number }>;
  /** `step`: the key of the step whose wait this answers (a wait's `step`), needed when several steps wait under one name at once (fan-out items, parallel branches): without it that is a 400 under `step`. */
  answer(runId: string, name: string, value: unknown, options?: { step?: string }): Promise<{ outcome: string; run: RunRecord }>;
  cancel(runId: string): Promise<RunRecord>;
  retry(runId: string): Promise<RunRecord>;
  /** A fresh run token for the run (an API key's or your app's session's; not a run token's). */
  runToken(runId: string): Promise<{ run_id: string; token: string; token_expires_in: number }>;
  run(runId: string): Promise<RunRecord>;
  events(runId: string, options?: { after?: string; limit?: number }): Promise<{ events: FlowkitEvent[]; next: string; done: boolean }>;
  request(method: string, path: string, options?: { body?: unknown; headers?: Record<string, string>; token?: TokenOption }): Promise<any>;
  /** One HTTP exchange, not retried nor turned into a FlowkitError: its status and JSON body (null when none). */
  send(method: string, path: string, body: unknown, headers: Record<string, string>, token: string | undefined): Promise<{ ok: boolean; status: number; data: any }>;
}

/** How one connection of a transport ended (given once to `onEnd`). */
export interface TransportEnd {
  /** The connection was established before it ended. */
  opened: boolean;
  /** The server ended it on purpose (WebSocket close 1000, the SSE body's end). */
  clean: boolean;
  /** The server is restarting: reconnect even after a terminal event. */
  restart: boolean;
  /** An HTTP status that refused the connection (SSE), or 401 for an expired token. */
  status?: number;
  /** The API's error code with that status (SSE), or the WebSocket close code. */
  code?: string | number;
  message?: string;
  /** The refusal's Retry-After, in seconds (SSE). */
  retryAfter?: number;
}

export interface TransportHandlers {
  onOpen(): void;
  onEvent(event: FlowkitEvent): void;
  /** Called once, however the connection ended. */
  onEnd(end: TransportEnd): void;
  /** The relay's word on itself: `{status: "degraded", since, message}` or `{status: "live"}`. */
  onStatus?(status: { status: "degraded" | "live"; since?: number; message?: string }): void;
}

export interface TransportOptions {
  baseUrl?: string;
  runId: string;
  /** Resume after this event id. */
  after?: string | null;
  token?: string;
  credentials?: RequestCredentials;
  /** SSE: the fetch to read the stream with. */
  fetch?: typeof fetch;
  /** WebSocket: the constructor to open the socket with. */
  WebSocket?: unknown;
  idleTimeout?: number;
}

/** One WebSocket connection to a run's relay (`/runs/<id>/stream`), from the event after `after`. */
export declare function openWebSocket(options: TransportOptions, handlers: TransportHandlers): { close(): void };
/** One SSE response from the run's events endpoint (`/runs/<id>/events`), read with fetch. */
export declare function openEventStream(options: TransportOptions, handlers: TransportHandlers): { close(): void };
/** One SSE message block (lines of `field: value`) as an event, or null (a ping, a comment). */
export declare function parseSseBlock(block: string): FlowkitEvent | null;
/** The client's base URL (maybe relative, e.g. "/flowkit") joined with `path`, made absolute against the page's location. */
export declare function absoluteUrl(baseUrl: string | null | undefined, path: string): string;

export declare function foldEvent(state: RunState, event: FlowkitEvent): RunState;
export declare function foldEvents(state: RunState, events: FlowkitEvent[]): RunState;
export declare function initialRunState(runId?: string): RunState;
export declare function compareEventIds(a: string | null | undefined, b: string | null | undefined): number;
export declare function isTerminal(state: RunState): boolean;
/** A state as a watch saves it: each step without `text` and `chunks` (made again from `rawChunks`). */
export declare function packState(state: RunState): Omit<RunState, "steps"> & { steps: Record<string, Omit<StepState, "text" | "chunks">> };
/** A saved state (packed, or whole as saved before) as the fold makes it. */
export declare function unpackState(saved: Omit<RunState, "steps"> & { steps: Record<string, Partial<StepState>> }): RunState;
export declare const TERMINAL_STATES: RunStateName[];
export declare function storageKey(runId: string): string;
