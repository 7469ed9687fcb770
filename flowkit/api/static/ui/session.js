// Who the dashboard is: the URLs the server wrote into the shell, and the credential.
// A key is entered once and kept in sessionStorage (this tab only, gone when it closes),
// sent as `Authorization: Bearer`; never in a URL. An API that lets the browser in by
// itself (a host app's cookie login through `authorize`, or FLOWKIT_API_OPEN) needs none:
// the dashboard asks for a key only after the API answered 401.

import { FlowkitClient } from "../client/flowkit-client.js";

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content ?? "";
export const urls = { api: meta("flowkit-api"), ui: meta("flowkit-ui"), static: meta("flowkit-static") };
const KEY = "flowkit.ui.key";

export function savedKey() {
  return sessionStorage.getItem(KEY) || undefined;
}

export function saveKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** A client with the dashboard's credential (or a run token, on the watch page). */
export function makeClient(token = savedKey()) {
  return new FlowkitClient({ baseUrl: urls.api, token, credentials: "same-origin" });
}
