// useRun(runId): a React hook over FlowkitClient.watch. It keeps the folded run
// state in React state and persists it (with the last event id) in
// sessionStorage by default, so a page refresh reattaches to the run where it
// was instead of starting over or losing it. React is a peer dependency.

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { FlowkitClient, initialRunState, unpackState } from "./index.js";

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
    if (saved?.state?.runId === runId) return { ...unpackState(saved.state), connection: "connecting" };
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
  const {
    client: given, baseUrl, token: tokenOption, credentials, storage: storageOption, transport, onEvent, WebSocket, fetch,
    backoff, idleTimeout,
  } = options;
  // A token function is often written inline, a new one each render: the client and the
  // watch keep one stable function that calls the latest, instead of starting over.
  const latestToken = useRef(tokenOption);
  latestToken.current = tokenOption;
  const callLatestToken = useCallback(() => latestToken.current(), []);
  const token = typeof tokenOption === "function" ? callLatestToken : tokenOption;
  // onEvent likewise: the watch calls the latest render's function (it kept the first's)
  const latestOnEvent = useRef(onEvent);
  latestOnEvent.current = onEvent;
  // fetch and storage likewise (`fetch: (...a) => fetch(...a)`, `storage: { getItem, setItem }`
  // inline): a new one each render restarted the watch, and each event's render again
  const latestFetch = useRef(fetch);
  latestFetch.current = fetch;
  const callLatestFetch = useCallback((...args) => latestFetch.current(...args), []);
  const stableFetch = typeof fetch === "function" ? callLatestFetch : fetch;
  const client = useMemo(
    () => given ?? new FlowkitClient({ baseUrl, token, credentials, WebSocket, fetch: stableFetch }),
    [given, baseUrl, token, credentials, WebSocket, stableFetch],
  );
  const latestStorage = useRef(null);
  latestStorage.current = storageOption === undefined ? defaultStorage() : storageOption;
  const hasStorage = latestStorage.current != null;
  const storage = useMemo(() => (hasStorage ? {
    getItem: (key) => latestStorage.current?.getItem(key) ?? null,
    setItem: (key, value) => latestStorage.current?.setItem(key, value),
    removeItem: (key) => latestStorage.current?.removeItem?.(key),
  } : null), [hasStorage]);
  // The state is kept with the runId it belongs to: a render for another runId shows that
  // run's saved (or empty) state at once, never the previous run's under the new id.
  const [held, setHeld] = useState(() => ({ runId, state: restoredState(storage, runId) }));
  let state = held.state;
  if (held.runId !== runId) {
    state = restoredState(storage, runId);
    setHeld({ runId, state }); // re-rendered before anything is shown
  }
  const [watch, setWatch] = useState(null);
  // backoff is often written inline: its numbers, not the object, restart the watch
  const backoffInitial = backoff?.initial;
  const backoffMax = backoff?.max;

  useEffect(() => {
    if (!runId) {
      setHeld({ runId, state: initialRunState(runId) });
      setWatch(null);
      return undefined;
    }
    const watchBackoff = {};
    if (backoffInitial !== undefined) watchBackoff.initial = backoffInitial;
    if (backoffMax !== undefined) watchBackoff.max = backoffMax;
    const w = client.watch(runId, { storage, transport, token, backoff: watchBackoff, idleTimeout });
    setWatch(w);
    setHeld({ runId, state: w.state });
    const unsubscribe = w.subscribe((next) => setHeld({ runId, state: next }));
    const stopEvents = w.onEvent((event) => latestOnEvent.current?.(event));
    return () => {
      unsubscribe();
      stopEvents();
      w.close();
    };
    // backoff's numbers are its dependencies (a new object each render must not reconnect)
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, runId, storage, transport, token, backoffInitial, backoffMax, idleTimeout]);

  return {
    state,
    // the watch of this runId only: the previous run's until the effect has made the new one
    watch: watch && watch.runId === runId ? watch : null,
    client,
    answer: (name, value, options) => client.answer(runId, name, value, options),
    cancel: () => client.cancel(runId),
    retry: () => client.retry(runId),
  };
}
