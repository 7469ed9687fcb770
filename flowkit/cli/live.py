"""A run followed in the terminal: one line per step, the text it streams, then the output.

``RunView`` folds events into what a person wants to see: each step's status, attempt,
progress fraction, ETA and duration, the current step's latest streamed text, and what a
paused run waits for. On a terminal it redraws in place (rich's ``Live``); in a pipe or
a log it prints one plain line per event and each step's streamed text as whole lines,
so that nothing is lost and nothing needs a TTY. The view holds no I/O of its own
besides the console it is given.

Its hints (how to answer a wait, how to retry a failed run) name ``flowkit input``,
``flowkit event`` and ``flowkit retry``, which work on the deployment's Redis; a run
followed over ``--url`` gets the REST call instead (``curl -X POST .../input/NAME``): the
commands have no ``--url``, and a machine that reaches only the API cannot run them.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .output import human_duration
from .remote import TOKEN

#: Characters of a step's streamed text kept for the live view (its tail is shown).
TEXT_TAIL = 400

_STYLE = {"running": "cyan", "completed": "green", "retrying": "yellow", "failed": "red",
          "waiting": "magenta"}
#: The run's state (flowkit.states.RunState) after an event that does not name it, as the
#: JS client folds it: the head shows a state ("running"), a log line the event ("started").
_STATE_AFTER = {"run.held": "queued", "run.admitted": "queued", "run.started": "running",
                "run.resumed": "queued", "run.restarted": "queued"}
_MARK = {"running": "…", "completed": "✓", "retrying": "↻", "failed": "✗", "waiting": "⏸"}


@dataclass
class StepLine:
    key: str
    status: str = "running"
    attempt: int = 1
    started: float = 0.0
    fraction: float | None = None
    message: str = ""
    eta: float | None = None
    duration: float | None = None
    #: The streamed text of the attempts that paused (kept: see RunView.paused), and of the
    #: attempt running now (dropped if it fails, or a restart supersedes it).
    kept: str = ""
    #: The running attempt's chunks, each with the sub-step attempts it came from (those
    #: of a sub-step attempt that failed and ran again in place are dropped); only the
    #: newest TEXT_TAIL characters' worth are kept.
    pieces: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    error: str = ""

    @property
    def current(self) -> str:
        return "".join(text for _, text in self.pieces)[-TEXT_TAIL:]

    @property
    def text(self) -> str:
        return (self.kept + self.current)[-TEXT_TAIL:]

    def add_chunk(self, sub_steps: tuple[str, ...], text: str) -> None:
        self.pieces.append((sub_steps, text))
        while len(self.pieces) > 1 and sum(len(t) for _, t in self.pieces[1:]) >= TEXT_TAIL:
            self.pieces.pop(0)

    def drop_sub_step(self, failed: str) -> None:
        """A sub-step attempt failed and runs again: its text was not the step's."""
        self.pieces = [(subs, text) for subs, text in self.pieces if failed not in subs]

    def eta_now(self, now: float) -> float | None:
        """The step's own ETA, else one from its progress fraction and time so far."""
        if self.eta is not None:
            return self.eta
        if self.fraction and 0 < self.fraction < 1:
            return (now - self.started) * (1 - self.fraction) / self.fraction
        return None


@dataclass
class RunView:
    run_id: str
    #: The API's URL (redacted) when the run is followed over ``--url``: hints are its calls.
    api: str | None = None
    #: What the CLI sends the API (remote.KEY, remote.TOKEN, None): the calls it hints at
    #: send the same, or an API key where a run token may not.
    credential: str | None = None
    state: str = "queued"
    note: str = ""
    #: Why the run does not move (:meth:`stalled`), until its next event.
    stall: str = ""
    steps: dict[str, StepLine] = field(default_factory=dict)
    current: str | None = None
    started: float | None = None
    #: (step, attempt) of the attempts that paused: the next one keeps their text (a
    #: resumed attempt does not send again what it replays; see events.superseded_attempts)
    paused: set[tuple[str, int]] = field(default_factory=set)

    def feed(self, event: dict[str, Any]) -> str | None:
        """Fold one event in; return the plain line it is worth, if any."""
        kind, key, ts = event.get("type", ""), event.get("step"), event.get("ts", time.time())
        self.stall = ""  # it moves
        if kind.startswith("run."):
            return self._run_event(kind, event, ts)
        if key is None:
            return None
        step = self.steps.get(key)
        if kind == "step.started" or step is None:
            kept = "" if step is None else step.kept + (
                step.current if (key, step.attempt) in self.paused else "")
            step = self.steps[key] = StepLine(key, started=ts, kept=kept[-TEXT_TAIL:],
                                              attempt=event.get("attempt", 1) or 1)
            self.current = key
            return f"step {key} started (attempt {step.attempt})"
        if kind == "step.output":
            step.add_chunk(tuple(event.get("sub_steps") or ()), str(event.get("chunk", "")))
            self.current = key
            return None
        if kind == "sub_step.retrying":
            step.drop_sub_step(event.get("sub_step") or "")
            return (f"step {key}: sub-step {event.get('sub_step')} failed, retrying: "
                    f"{_error_text(event.get('error'))}")
        if kind == "step.progress":
            step.fraction, step.message = event.get("fraction"), event.get("message") or ""
            step.eta = event.get("eta")
            pct = f" {step.fraction:.0%}" if step.fraction is not None else ""
            return f"step {key}{pct} {step.message}".rstrip()
        if kind == "step.retrying":
            # attempts of one step.started retry in the worker, with no step.started of
            # their own: the event says which attempt failed and which one comes next
            failed = event.get("attempt") or step.attempt
            step.status, step.error = "retrying", _error_text(event.get("error"))
            step.attempt = event.get("next_attempt") or failed + 1
            step.pieces = []  # the failed attempt's text: the next one streams its own
            return f"step {key} attempt {failed} failed, retrying: {step.error}"
        if kind == "step.completed":
            step.status, step.duration, step.fraction = "completed", event.get("duration"), 1.0
            step.eta = None
            cached = " (cached)" if event.get("cached") else ""
            return f"step {key} completed in {human_duration(step.duration)}{cached}"
        if kind == "step.failed":
            step.status, step.error = "failed", _error_text(event.get("error"))
            step.attempt = event.get("attempt") or step.attempt
            return f"step {key} failed: {step.error}"
        return None

    def _run_event(self, kind: str, event: dict[str, Any], ts: float) -> str | None:
        if kind == "run.started":
            self.started = self.started or ts
        verb = kind.split(".", 1)[1]
        self.state = _STATE_AFTER.get(kind, verb)
        if kind == "run.waiting":
            if event.get("step") and event.get("attempt"):
                self.paused.add((event["step"], event["attempt"]))
            self.state, self.note = "waiting", _waiting_note(self.run_id, event, self.api,
                                                            self.credential)
            if event.get("step") in self.steps and event.get("kind") not in ("slot", "sleep"):
                self.steps[event["step"]].status = "waiting"
            return f"run waiting: {self.note}"
        if kind == "run.held":
            self.note = event.get("reason", "")
            return f"run held: {self.note}"
        if kind in ("run.resumed", "run.admitted", "run.started"):
            self.note = ""
            for step in self.steps.values():
                if step.status == "waiting":
                    step.status = "running"
        if kind == "run.restarted":  # the picture's note says so; the line says it once
            self.note = f"restarted: {event.get('reason', '')}"
            return f"run restarted: {event.get('reason', '')}"
        if kind == "run.failed":
            self.note = _error_text(event.get("error"))
        elif kind in ("run.succeeded", "run.cancelled"):  # not the wait it ended in
            self.note = event.get("reason", "")
        line = f"run {verb}"
        return f"{line}: {self.note}" if self.note else line

    def stalled(self, state: str, why: str) -> None:
        """The run does not move (:class:`~.following.StallWatch`): the head says why, until
        its next event or until the reason is gone (``why`` empty)."""
        self.stall = why

    def __rich__(self) -> Group:
        """Drawn at each of ``Live``'s refreshes: times and ETAs go on between events."""
        return self.render()

    def render(self, now: float | None = None) -> Group:
        """The live picture: the run's state, a table of steps, the current step's text."""
        now = time.time() if now is None else now
        head = Text(f"run {self.run_id}  ", style="bold")
        head.append(self.state, style=_STYLE.get(self.state, "bold"))
        if self.stall or self.note:
            head.append(f"  {self.stall or self.note}", style="dim")
        table = Table.grid(padding=(0, 2))
        for step in list(self.steps.values()):  # a copy: feed() may add steps meanwhile
            table.add_row(*_row(step, now))
        parts: list[Any] = [head, table]
        current = self.steps.get(self.current or "")
        if current is not None and current.text and current.status != "completed":
            parts.append(Text(f"{current.key} > " + current.text.strip()[-240:], style="dim"))
        return Group(*parts)


def _row(step: StepLine, now: float) -> tuple[Text, ...]:
    style = _STYLE.get(step.status, "")
    if step.status == "completed":
        timing = human_duration(step.duration)
    else:
        eta = step.eta_now(now)
        timing = human_duration(now - step.started) + (f", ETA {human_duration(eta)}"
                                                        if eta is not None else "")
    pct = f"{step.fraction:.0%}" if step.fraction is not None else ""
    attempt = f"attempt {step.attempt}" if step.attempt > 1 else ""
    detail = step.error if step.status in ("retrying", "failed") else step.message
    return (Text(_MARK.get(step.status, " "), style=style), Text(step.key, style=style),
            Text(pct), Text(timing), Text(attempt, style="yellow"), Text(detail, style="dim"))


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'Error')}: {error.get('message', '')}".strip(": ")
        return f"{text} (at {error['where']})" if error.get("where") else text
    return str(error or "")


def _waiting_note(run_id: str, event: dict[str, Any], api: str | None = None,
                  credential: str | None = None) -> str:
    kind, name = event.get("kind"), event.get("name", "")
    if kind == "input":
        prompt = f" ({event['prompt']})" if event.get("prompt") else ""
        answer = (_post(api, f"/runs/{quote(run_id, safe='')}/input/{quote(name, safe='')}",
                        body=True, credential=credential, answer=True) if api
                  else f"flowkit input {run_id} {name} '<JSON>'")
        return f"input {name!r}{prompt}; answer: {answer}"
    if kind == "event":
        send = (_post(api, f"/events/{quote(name, safe='')}", body=True,
                      credential=credential) if api
                else f"flowkit event {name} '<JSON>'")
        return f"event {name!r}; send it: {send}"
    return event.get("reason") or f"{kind} {name}".strip()


def _post(api: str, path: str, body: bool = False, credential: str | None = None,
          answer: bool = False) -> str:
    """The REST call a remote follower makes instead of a command that needs Redis, with
    the API key as the CLI reads it (FLOWKIT_API_KEY); without one when the CLI sends none
    (an open API, as flowkit dev serves: a header of an unset variable was no key). With a
    run token (``--token``), a call it may make (``answer``: its run's input) sends it, as
    a placeholder: the token is not printed into a log; any other needs an API key."""
    call = f"curl -X POST {shlex.quote(api + path)}"
    if credential == TOKEN and answer:
        call += " -H 'Authorization: Bearer <run token>'"
    elif credential:
        call += ' -H "Authorization: Bearer $FLOWKIT_API_KEY"'
    return f"{call} -H 'Content-Type: application/json' -d '<JSON>'" if body else call


#: Events after which a step streams no more text in that attempt.
_STEP_ENDS = ("step.completed", "step.retrying", "step.failed", "run.waiting")


class Printer:
    """Plain output for pipes and logs: a line per event, streamed text as whole lines."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.pending: dict[str, str] = {}
        self._lock = threading.Lock()  # lines whole: a stall is told from another thread

    def stalled(self, state: str, why: str) -> None:
        """The run does not move (:class:`~.following.StallWatch`): one line saying why."""
        if not why:
            return  # the reason is gone: the next event says the run moves
        with self._lock:
            self.console.print(f"run {state}: {why}", markup=False, highlight=False)

    def show(self, event: dict[str, Any], line: str | None) -> None:
        with self._lock:
            self._show(event, line)

    def _show(self, event: dict[str, Any], line: str | None) -> None:
        key = event.get("step") or ""
        if event.get("type") == "step.output":
            self.pending[key] = self.pending.get(key, "") + str(event.get("chunk", ""))
            *whole, self.pending[key] = self.pending[key].split("\n")
            for text in whole:
                self.console.print(f"  {key} > {text}", markup=False, highlight=False)
            return
        if key in self.pending and event.get("type") in _STEP_ENDS:
            rest = self.pending.pop(key)  # the text's last line, without its newline
            if rest.strip():
                self.console.print(f"  {key} > {rest}", markup=False, highlight=False)
        if line:
            self.console.print(line, markup=False, highlight=False)


def final_lines(record: dict[str, Any], app: str | None = None,
                api: str | None = None, credential: str | None = None) -> list[str]:
    """What follows the live view once the run has ended: the output, or the error (and the
    retry command, with the ``-A`` the run was started with: retry imports the workflow; or,
    followed over ``--url``, the API's ``POST .../retry`` at ``api``)."""
    state = record.get("state")
    took = ""
    if record.get("finished_at") and record.get("created_at"):
        took = f" in {human_duration(float(record['finished_at']) - float(record['created_at']))}"
    lines = [f"run {record.get('id')} {state}{took}"]
    if state == "succeeded":
        lines.append(json.dumps(record.get("output"), indent=2, default=str))
    elif state == "failed":
        error = record.get("error") or {}
        where = f" in step {record['failed_step']}" if record.get("failed_step") else ""
        lines.append(f"error{where}: {_error_text(error)}")
        with_app = f" -A {shlex.quote(app)}" if app else ""
        retry = (_post(api, f"/runs/{quote(str(record.get('id')), safe='')}/retry",
                       credential=credential) if api
                 else f"flowkit retry {record.get('id')}{with_app}")
        lines.append(f"retry it from the failed step: {retry}")
    return lines
