// The dashboard's entry: picks the view from the path (so a deep link or a refresh
// shows the same view), and asks for an API key when the API refuses the browser.

import { h, fill } from "./dom.js";
import { urls, savedKey, saveKey, makeClient } from "./session.js";
import { runsView } from "./runs.js";
import { runView } from "./run.js";
import { workersView } from "./workers.js";

const main = document.getElementById("main");

function route() {
  const rest = decodeURIComponent(location.pathname.slice(urls.ui.length)).replace(/^\/+|\/+$/g, "");
  const [first, second] = rest.split("/");
  if (first === "runs" && second) return { name: "run", runId: second };
  if (first === "workers") return { name: "workers" };
  return { name: "runs" };
}

// While Redis (or the server) is away the API answers 503 "retry shortly": the page
// does, every RETRY_MS, and shows the view once it answers (it stayed on the message).
const RETRY_MS = 2000;

async function start() {
  const client = makeClient();
  try {
    await client.request("GET", "/runs?limit=1");
  } catch (error) {
    if (error.status === 401) return login(error.message);
    // a credential that is one but cannot list runs (a run token pasted as the key): the
    // tab kept it and said the same at every reload, with no way to sign in again
    if (error.status === 403) return login(`That credential cannot read the dashboard: ${error.message} Sign in with an API key.`);
    const passing = error.status === 503 || error.status === undefined || error.status === 0;
    fill(main, h("p", { role: "alert" }, `The API answered: ${error.message}`,
      passing ? " Trying again…" : ""));
    if (passing) setTimeout(start, RETRY_MS);
    return;
  }
  const logout = document.getElementById("logout");
  logout.hidden = !savedKey();
  logout.onclick = () => { saveKey(null); location.reload(); };
  const where = route();
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === (where.name === "run" ? "runs" : where.name)) link.setAttribute("aria-current", "page");
  }
  if (where.name === "run") runView(main, client, where.runId, { dashboard: true });
  else if (where.name === "workers") workersView(main, client);
  else runsView(main, client);
}

function login(message) {
  const input = h("input", { id: "key", type: "password", autocomplete: "current-password", required: true });
  const status = h("p", { role: "alert", class: "error" }, savedKey() ? "That key was refused." : "");
  const form = h("form", { class: "login", onsubmit: (e) => {
    e.preventDefault();
    saveKey(input.value.trim());
    fill(main, h("p", { class: "muted" }, "Signing in…"));
    start();
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "muted" }, message),
  h("label", { for: "key" }, "API key"), input,
  h("button", { type: "submit" }, "Sign in"), status);
  saveKey(null);
  fill(main, form);
  input.focus();
}

start();
