// The watch page: the run view in run-token mode. The token in ?token= reads this run
// only (and may answer its waits); there is no navigation to anything else.

import { makeClient } from "./session.js";
import { runView } from "./run.js";

const parts = location.pathname.split("/");
const runId = decodeURIComponent(parts[parts.length - 2]);
const token = new URLSearchParams(location.search).get("token") ?? undefined;
runView(document.getElementById("main"), makeClient(token), runId, { dashboard: false });
