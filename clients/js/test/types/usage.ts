// Compiled (not run) by test/types.test.js: the dashboard's uses of the client type-check
// against index.d.ts and react.d.ts through the package's own "exports".
import { FlowkitClient, FlowkitError, foldEvent, initialRunState, type RunState, type FlowkitEvent } from "@flowkit/client";
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
  const { state, answer, retry } = useRun(runId, { baseUrl: "/flowkit", storage: null });
  void [answer("approval", { ok: true }), retry()];
  return state.state;
}
void useView;

// @ts-expect-error: a transport the client does not have
client.watch("run-1", { transport: "carrier-pigeon" });
