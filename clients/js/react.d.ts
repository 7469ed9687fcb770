import type { FlowkitClient, FlowkitClientOptions, FlowkitEvent, RunState, RunWatch, StorageLike } from "./index.js";

export interface UseRunOptions extends FlowkitClientOptions {
  /** A client to share between hooks (else one is made from the other options). */
  client?: FlowkitClient;
  /** Defaults to sessionStorage: a refresh reattaches to the run. null: no persistence. */
  storage?: StorageLike | null;
  transport?: "auto" | "websocket" | "sse";
  /** Every raw event, once, in order. */
  onEvent?: (event: FlowkitEvent) => void;
}

export interface UseRunResult {
  state: RunState;
  watch: RunWatch | null;
  client: FlowkitClient;
  answer(name: string, value: unknown): Promise<unknown>;
  cancel(): Promise<unknown>;
  retry(): Promise<unknown>;
}

export declare function useRun(runId: string | null | undefined, options?: UseRunOptions): UseRunResult;
