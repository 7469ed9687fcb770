// Follows one run over the WebSocket relay. The last event id is kept in
// sessionStorage with the events seen, so a dropped socket or a page refresh
// resumes with ?after=<last id>: no event is shown twice or skipped. The server
// ends the stream at the run's latest terminal event only (a retried run's
// run.failed is followed by the rest), so the page always reconnects once on
// load: the server closes at once when nothing came after what it saw.
(function () {
  "use strict";
  var parts = location.pathname.split("/");
  var runId = decodeURIComponent(parts[parts.length - 2]);
  var token = new URLSearchParams(location.search).get("token");
  var storeKey = "flowkit.watch." + runId;
  var saved = JSON.parse(sessionStorage.getItem(storeKey) || '{"last":null,"events":[]}');
  var state = { last: saved.last, events: [], done: false, socket: null, connects: 0 };
  var dropped = {}; // "step#attempt" of attempts whose chunks are void
  var $ = function (id) { return document.getElementById(id); };
  $("run").textContent = runId;

  function setState(name) { $("state").textContent = name; $("state").dataset.state = name; }

  function show(event) {
    state.events.push(event);
    var li = document.createElement("li");
    li.dataset.id = event.id;
    li.dataset.type = event.type;
    li.textContent = event.id + "  " + event.type + (event.step ? "  " + event.step : "") +
      (event.message ? "  " + event.message : "");
    $("events").appendChild(li);
    if (event.type === "step.output") {
      var span = document.createElement("span");
      span.dataset.attempt = event.step + "#" + event.attempt;
      span.textContent = typeof event.chunk === "string" ? event.chunk :
        (typeof event.data === "string" ? event.data : JSON.stringify(event.chunk || event.data || ""));
      $("text").appendChild(span);
    } else if (event.type === "step.progress") {
      if (typeof event.fraction === "number") $("progress").value = event.fraction;
      if (event.message) $("message").textContent = event.message;
    } else if (event.type === "step.retrying") {
      discard(event.step + "#" + event.attempt);
    } else if (event.type === "run.restarted") {
      (event.superseded || []).forEach(function (s) { discard(s.step + "#" + s.attempt); });
    }
    if (event.type === "run.waiting") {
      setState("waiting");
      $("message").textContent = "Waiting for " + event.kind + " " + JSON.stringify(event.name) +
        (event.prompt ? ": " + event.prompt : "") +
        (event.expires_at ? " (until " + new Date(event.expires_at * 1000).toLocaleString() + ")" : "");
    }
    if (event.type === "run.resumed") { setState("queued"); $("message").textContent = ""; }
    if (event.type === "run.scheduled") setState("scheduled");
    if (event.type === "run.queued") setState("queued");
    if (event.type === "run.started") setState("running");
    if (event.type === "run.restarted") setState("queued");
    if (event.type === "run.succeeded") setState("succeeded");
    if (event.type === "run.failed") setState("failed");
    if (event.type === "run.cancelled") setState("cancelled");
    if (/^run\.(succeeded|failed|cancelled)$/.test(event.type)) state.done = true;
    if (event.type === "run.restarted") state.done = false;
  }

  function discard(attempt) {
    dropped[attempt] = true;
    document.querySelectorAll('#text span[data-attempt="' + attempt + '"]').forEach(function (el) {
      el.remove();
    });
  }

  function save() {
    sessionStorage.setItem(storeKey, JSON.stringify({ last: state.last, events: state.events }));
  }

  function connect() {
    var url = new URL(location.pathname.replace(/\/watch$/, "/stream"), location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    if (state.last) url.searchParams.set("after", state.last);
    if (token) url.searchParams.set("token", token);
    var socket = new WebSocket(url.toString());
    state.socket = socket;
    state.connects += 1;
    socket.onopen = function () { $("connection").textContent = "live"; };
    socket.onmessage = function (msg) {
      var event = JSON.parse(msg.data);
      show(event);
      state.last = event.id;
      save();
    };
    socket.onclose = function (close) {
      // a clean close after a terminal event is the end; anything else reconnects
      if (state.done && close.code !== 1012) { $("connection").textContent = "ended"; return; }
      $("connection").textContent = "reconnecting";
      setTimeout(connect, 1000);
    };
  }

  // While the run is queued, its record says what it waits for (no live worker on its queue).
  function checkQueued() {
    var shown = $("state").dataset.state;
    if (shown !== "queued" && shown !== "connecting") {
      $("waiting").hidden = true;
      if (!state.done) setTimeout(checkQueued, 3000);  // a restart queues it again
      return;
    }
    var url = location.pathname.replace(/\/watch$/, "") + (token ? "?token=" + encodeURIComponent(token) : "");
    fetch(url).then(function (r) { return r.ok ? r.json() : null; }).then(function (run) {
      var why = run && run.state === "queued" ? run.waiting_for : null;
      $("waiting").hidden = !why;
      $("waiting").textContent = why ? "Waiting: " + why : "";
    }).catch(function () {}).finally(function () { setTimeout(checkQueued, 3000); });
  }

  saved.events.forEach(show);
  connect();
  checkQueued();
  window.flowkitWatch = state;
})();
