// Compiled (not run) by test/types.test.js: the dashboard's uses of the client type-check
// against index.d.ts and react.d.ts through the package's own "exports".
import {
  FlowkitClient, FlowkitError, RunWatch, foldEvent, initialRunState, packState, unpackState, openWebSocket, openEventStream, parseSseBlock, absoluteUrl,
  type RunState, type FlowkitEvent, type TransportEnd, type RunRecord,
} from "@flowkit/client";
import { useRun } from "@flowkit/client/react";

const client = new FlowkitClient({ baseUrl: "/flowkit", token: undefined, credentials: "same-origin" });
const watch = client.watch("run-1", { lastEventId: "1-0", storage: null, transport: "auto" });
const unsubscribe: () => void = watch.subscribe((state: RunState) => {
  const texts: string[] = state.order.map((key) => state.steps[key].text);
  const status: string = state.steps[state.order[0]].status;
  const open: boolean = state.connection === "open";
  void [texts, status, open, state.output, state.error?.message, state.waiting?.name, state.waits.map((w) => w.name), state.tokens.total];
});
watch.onEvent((event: FlowkitEvent) => void event.id);
const minted = new FlowkitClient({ token: async () => (await fetch("/app/runs/run-1/token")).text() });
minted.watch("run-1", { token: () => "a-run-token" }).close();
unsubscribe();
watch.close();

async function actions(): Promise<void> {
  const run = await client.start("content", { topic: "x" }, { idempotencyKey: "k", priority: 3 });
  const token: string = run.token;
  await client.answer(run.id, "approval", { ok: true });
  await client.cancel(run.id);
  await client.retry(run.id);
  const page = await client.events(run.id, { after: "0" });
  const folded: RunState = page.events.reduce(foldEvent, initialRunState(run.id));
  void [token, folded, (await client.run(run.id)).state];
  try {
    await client.start("x");
  } catch (error) {
    if (error instanceof FlowkitError) void [error.status, error.code, error.fields];
  }
}
void actions;

function useView(runId: string | null) {
  const { state, answer, retry, cancel, watch: w } = useRun(runId, {
    baseUrl: "/flowkit", storage: null, idleTimeout: 0, backoff: { initial: 10 }, onEvent: (e) => void e.type,
  });
  async function act(): Promise<void> {
    const answered = await answer("approval", { ok: true });
    const outcome: string = answered.outcome;
    const retried: RunRecord = await retry();
    const cancelled: RunRecord = await cancel();
    void [outcome, answered.run.state, retried.state, cancelled.id];
  }
  void [act, w?.transport];
  return state.state;
}
void useView;

// The client's public fields, as the tests' helpers and a page's diagnostics read them.
const openWatches: number = client.watches.size;
const fields = [client.baseUrl, client.token, client.tokens.refreshable, client.credentials, client.backoff.initial, client.idleTimeout];
for (const w of client.watches) void [w.runId, w.transport, w.connects, w.failure?.status, w.backoff.max, w.idleTimeout];
const refused = new FlowkitError(409, "invalid_state", "The run has ended.", { run: ["ended"] });
const refusedStatus: number = refused.status;
void [openWatches, fields, refusedStatus];

// The transports, for a page that follows a stream its own way.
const sock = openWebSocket({ baseUrl: "/flowkit", runId: "run-1", after: "1-0", token: "t", WebSocket: globalThis.WebSocket, idleTimeout: 0 }, {
  onOpen: () => {},
  onEvent: (event: FlowkitEvent) => void event.id,
  onEnd: (end: TransportEnd) => void [end.opened, end.clean, end.status, end.retryAfter],
  onStatus: (status) => void status.since,
});
sock.close();
openEventStream({ runId: "run-1", fetch }, { onOpen() {}, onEvent() {}, onEnd() {} }).close();
const parsed: FlowkitEvent | null = parseSseBlock("id: 1-0\ndata: {}");
const url: string = absoluteUrl("/flowkit", "/runs/run-1");
const saved: RunState = unpackState(JSON.parse(JSON.stringify(packState(initialRunState("run-1")))));
void [parsed, url, saved];

// @ts-expect-error: FlowkitError takes the status first
new FlowkitError("invalid_state", 409, "x");

// @ts-expect-error: a transport the client does not have
client.watch("run-1", { transport: "carrier-pigeon" });
