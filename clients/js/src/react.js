// useRun(runId): a React hook over FlowkitClient.watch. It keeps the folded run
// state in React state and persists it (with the last event id) in
// sessionStorage by default, so a page refresh reattaches to the run where it
// was instead of starting over or losing it. React is a peer dependency.

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { FlowkitClient, initialRunState } from "./index.js";

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // storage disabled (privacy settings): resume from the server alone
  }
}

function restoredState(storage, runId) {
  if (!storage || !runId) return initialRunState(runId);
  try {
    const saved = JSON.parse(storage.getItem(`flowkit.run.${runId}`) ?? "null");
    if (saved?.state?.runId === runId) return { ...saved.state, connection: "connecting" };
  } catch {
    /* unreadable: the watch starts over */
  }
  return initialRunState(runId);
}

/**
 * Follow a run: `{ state, watch, client, answer, cancel, retry }`, re-rendered after
 * every event and connection change. A null/undefined runId follows nothing.
 * @param {string|null|undefined} runId
 * @param {import("./react").UseRunOptions} [options]
 */
export function useRun(runId, options = {}) {
  const { client: given, baseUrl, token: tokenOption, credentials, storage: storageOption, transport, onEvent, WebSocket, fetch } = options;
  // A token function is often written inline, a new one each render: the client and the
  // watch keep one stable function that calls the latest, instead of starting over.
  const latestToken = useRef(tokenOption);
  latestToken.current = tokenOption;
  const callLatestToken = useCallback(() => latestToken.current(), []);
  const token = typeof tokenOption === "function" ? callLatestToken : tokenOption;
  const client = useMemo(
    () => given ?? new FlowkitClient({ baseUrl, token, credentials, WebSocket, fetch }),
    [given, baseUrl, token, credentials, WebSocket, fetch],
  );
  const storage = storageOption === undefined ? defaultStorage() : storageOption;
  const [state, setState] = useState(() => restoredState(storage, runId));
  const [watch, setWatch] = useState(null);

  useEffect(() => {
    if (!runId) {
      setState(initialRunState(runId));
      setWatch(null);
      return undefined;
    }
    const w = client.watch(runId, { storage, transport, token });
    setWatch(w);
    setState(w.state);
    const unsubscribe = w.subscribe(setState);
    const stopEvents = onEvent ? w.onEvent(onEvent) : () => {};
    return () => {
      unsubscribe();
      stopEvents();
      w.close();
    };
    // onEvent is read when the watch starts; a new function each render must not reconnect
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, runId, storage, transport, token]);

  return {
    state,
    watch,
    client,
    answer: (name, value) => client.answer(runId, name, value),
    cancel: () => client.cancel(runId),
    retry: () => client.retry(runId),
  };
}
