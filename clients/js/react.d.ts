import type { FlowkitClient, FlowkitClientOptions, FlowkitEvent, RunRecord, RunState, RunWatch, StorageLike } from "./index.js";

export interface UseRunOptions extends FlowkitClientOptions {
  /** A client to share between hooks (else one is made from the other options). */
  client?: FlowkitClient;
  /** Defaults to sessionStorage: a refresh reattaches to the run. null: no persistence. */
  storage?: StorageLike | null;
  transport?: "auto" | "websocket" | "sse";
  /** Every raw event, once, in order (to the latest render's function). */
  onEvent?: (event: FlowkitEvent) => void;
}

export interface UseRunResult {
  state: RunState;
  /** The watch of this runId; null until the hook's effect has made it. */
  watch: RunWatch | null;
  client: FlowkitClient;
  /** `client.answer(runId, name, value, options)`; `step` names the step whose wait it answers. */
  answer(name: string, value: unknown, options?: { step?: string }): Promise<{ outcome: string; run: RunRecord }>;
  cancel(): Promise<RunRecord>;
  retry(): Promise<RunRecord>;
}

export declare function useRun(runId: string | null | undefined, options?: UseRunOptions): UseRunResult;
