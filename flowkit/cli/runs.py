"""``flowkit status|events|cancel|retry|input|event``: inspect, control and answer runs.

Each prints for a person by default (local times, durations, one line per event) and
the JSON document with ``--json`` (``events --json``: one JSON object per line, as
before). Bad arguments are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from .. import events as ev
from ..engine import control as runs
from ..engine.control import canonical_run_id
from ..errors import FlowkitError, StoreUnavailable, ValidationError
from ..workflow import workflows
from .app import add_app_option, load_app, unknown_workflow
from .following import followed_locally
from .output import add_json_option, emit, human_duration, human_time
from .render import plural, short, show
from .usage import UsageError, parse_json, whole_number

#: Runs read per page while choosing failed runs to retry.
PAGE = 200


def event_cursor(value: str) -> str:
    """``--after``'s type (``events``, ``follow``): an event id, else argparse's one-line error."""
    cursor = ev.parse_cursor(value)
    if cursor is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an event id: pass one printed by `flowkit events --json` "
            "(e.g. 1733150645123-0), or 0 for the start")
    return cursor


# -- status --------------------------------------------------------------------------------


def _error_line(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    where = f" in step {error['step']}" if error.get("step") else ""
    tried = len(error.get("attempts") or ())
    after = f" after {plural(tried, 'attempt')}" if tried > 1 else ""
    at = f" (at {error['where']})" if error.get("where") else ""
    return f"{error.get('type', 'Error')}{where}{after}: {error.get('message', '')}{at}"


def _waits_line(run: dict[str, Any]) -> str | None:
    parts = []
    for wait in run.get("waits") or ():
        named = wait.get("name") or wait.get("key") or ""
        # a sleep is named "sleep": it said "sleep sleep until ..."
        what = f"{wait.get('kind')} {named if named != wait.get('kind') else ''}".strip()
        if wait.get("expires_at"):
            what += f" until {human_time(wait['expires_at'])}"
        if wait.get("kind") == "input":
            if wait.get("prompt"):
                what += f" asking {wait['prompt']!r}"
            fields = sorted((wait.get("schema") or {}).get("properties") or {})
            if fields:
                what += f", fields {', '.join(fields)}"
            if wait.get("refused"):
                what += f"; its answer was refused: {short(wait['refused'].get('errors'))}"
            what += f" (answer: flowkit input {run['id']} {wait.get('name')} JSON)"
        parts.append(what)
    for reason in (run.get("waiting_for"), run.get("held_for")):
        if reason:
            parts.append(reason)
    if run.get("state") == "scheduled" and run.get("start_at"):
        parts.append(f"its start at {human_time(run['start_at'])}")
    return "; ".join(parts) or None


def status_text(run: dict[str, Any]) -> Table:
    """A run's record for a person: what it is, where it is, how long it took."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")

    def row(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            grid.add_row(label, Text(str(value)))  # not markup: "[crm]" is the run's text

    row("Run", run["id"])
    row("Workflow", f"{run['workflow']} (version {run['version']})")
    row("State", run["state"])
    row("Waits for", _waits_line(run))
    row("Created", human_time(run["created_at"]))
    row("Started", human_time(run.get("started_at")) if run.get("started_at") else None)
    if run.get("finished_at"):
        took = float(run["finished_at"]) - float(run.get("started_at") or run["created_at"])
        row("Finished", f"{human_time(run['finished_at'])}, took {human_duration(took)}")
    elif run.get("started_at"):
        row("Running for", human_duration(time.time() - float(run["started_at"])))
    row("Queue", f"{run.get('queue') or '-'}, priority {run.get('priority', 0)}")
    if run.get("worker") and not run.get("finished_at"):
        beat = f", heartbeat {human_time(run['heartbeat_at'])}" if run.get("heartbeat_at") else ""
        row("Worker", f"{run['worker']}{beat}")
    if run.get("restarts"):
        row("Restarts", f"{run['restarts']} ({run.get('stuck_restarts', 0)} in a row without "
                        "progress)")
    attempts = run.get("attempts") or {}
    if attempts:
        retried = {step: n for step, n in attempts.items() if n > 1}
        text = f"{plural(len(attempts), 'step')} begun, {plural(sum(attempts.values()), 'attempt')}"
        if retried:
            # not "tried again": a step resumed after its wait begins again too
            text += ("; begun more than once (retried, restarted or resumed after a wait): "
                     + ", ".join(f"{s} x{n}" for s, n in sorted(retried.items())))
        row("Steps", text)
    if run.get("concurrency_group"):
        row("Concurrency", f"{run['concurrency_group']} (limit {run.get('concurrency_limit')})")
    row("Owner", run.get("owner"))
    row("Error", _error_line(run.get("error")))
    if run["state"] == "succeeded":
        row("Output", short(run.get("output"), 400))
    row("See", f"flowkit trace {run['id']}  |  flowkit events {run['id']}")
    return grid


def status(args: argparse.Namespace) -> int:
    run = runs.get_run(args.run_id).to_dict()
    if args.json:
        emit(args, run)
    else:
        show(status_text(run))
    return 0


# -- events ----------------------------------------------------------------------------------

#: Event fields the line shows in its own columns (or never: the run id is the command's).
_SHOWN = {"id", "type", "ts", "run", "step", "attempt"}


def _summary(event: dict[str, Any]) -> str:
    kind, data = event["type"], {k: v for k, v in event.items() if k not in _SHOWN}
    if kind == ev.STEP_OUTPUT:
        return short(data.get("chunk"))
    if kind == ev.STEP_PROGRESS:
        text = data.get("message") or ""
        if data.get("fraction") is not None:
            text += f" ({data['fraction']:.0%}"
            text += f", ETA {human_duration(data['eta'])})" if data.get("eta") is not None else ")"
        return text
    if kind == ev.STEP_COMPLETED:
        text = f"took {human_duration(data.get('duration'))}"
        if data.get("cached"):
            text += ", from the cache"
        if data.get("tokens"):
            text += f", {data['tokens'].get('total', 0)} tokens"
        return text
    if kind == ev.STEP_RETRYING:
        return (f"{data.get('error')}; attempt {data.get('next_attempt')} in "
                f"{human_duration(data.get('delay'))}")
    if kind == ev.SUB_STEP_RETRYING:
        return (f"sub-step {data.get('sub_step')}: {data.get('error')}; again in "
                f"{human_duration(data.get('delay'))}")
    if kind in (ev.RUN_FAILED, ev.STEP_FAILED):
        error = data.get("error")
        return _error_line(error) if isinstance(error, dict) else str(error)
    if kind == ev.RUN_SUCCEEDED:
        return "output " + short(data.get("output"))
    if kind == ev.RUN_SCHEDULED and data.get("start_at"):
        return f"starts {human_time(data['start_at'])}"
    return "  ".join(f"{k}={_value(k, v)}" for k, v in data.items())


def _value(name: str, value: Any) -> str:
    # a time (expires_at, sent_at) as the other commands show one: local, not Unix seconds
    if name.endswith("_at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return human_time(value)
    return short(value, 80)


def event_line(event: dict[str, Any]) -> str:
    """``17:04:05.123  step.completed  0:t.add_one #1  took 0.12s``: one event, one line."""
    stamp = datetime.fromtimestamp(float(event["ts"])).strftime("%H:%M:%S.%f")[:-3]
    where = ""
    if event.get("step"):
        where = event["step"] + (f" #{event['attempt']}" if event.get("attempt") else "")
    return f"{stamp}  {event['type']:<15} {where:<24} {_summary(event)}".rstrip()


def events(args: argparse.Namespace) -> int:
    runs.get_run(args.run_id)  # an unknown run says so instead of waiting forever
    try:
        # -f waits out a Redis restart as flowkit follow does (it quit, exit 1, while the
        # run went on); the history is one read
        docs = followed_locally(args.run_id, args.after) if args.follow else (
            event.to_dict() for event in runs.history(args.run_id, args.after))
    except ValidationError as exc:  # -f --after past the run's last event
        raise UsageError(exc.message) from None
    for doc in docs:
        print(json.dumps(doc, default=str) if args.json else event_line(doc), flush=True)
    return 0


# -- control -------------------------------------------------------------------------------


def cancel(args: argparse.Namespace) -> int:
    if len(args.run_ids) > 1:
        return _cancel_many(args)
    run = runs.cancel(args.run_ids[0]).to_dict()
    emit(args, run, lambda r: f"Cancelled run {r['id']} ({r['workflow']}): it is {r['state']}; "
                              "a running step stops at its next event or check.")
    return 0


def _cancel_many(args: argparse.Namespace) -> int:
    """Cancel each run named (a batch gone wrong); one refused (ended already, no such
    run) does not stop the others. Exit 1 when any was refused."""
    cancelled, refused = _each(runs.cancel, args.run_ids)
    done = {"cancelled": cancelled, "refused": refused}
    emit(args, done, _cancelled)
    return 1 if done["refused"] else 0


def _cancelled(done: dict[str, Any]) -> str:
    lines = [f"Cancelled {plural(len(done['cancelled']), 'run')}; a running step stops at its "
             "next event or check." if done["cancelled"] else "No run cancelled."]
    lines += [f"  {run_id}" for run_id in done["cancelled"]]
    if done["refused"]:
        lines.append(f"Not cancelled ({len(done['refused'])}):")
        lines += [f"  {run_id}: {why}" for run_id, why in done["refused"].items()]
    return "\n".join(lines)


def retry(args: argparse.Namespace) -> int:
    if not args.run_ids and not args.failed:
        raise UsageError("name the runs to retry: flowkit retry RUN_ID [RUN_ID ...], or every "
                         "failed run: flowkit retry --failed [-w WORKFLOW] [--step STEP].")
    if args.run_ids and args.failed:
        raise UsageError("give run ids or --failed, not both.")
    if not args.failed and (args.workflow or args.step):
        raise UsageError("-w and --step choose among failed runs: add --failed.")
    load_app(args)
    if (args.workflow and args.workflow not in workflows()
            and not runs.list_runs(args.workflow, "failed", 1)):
        # a typo retried nothing and said so, exit 0: read as "nothing failed" (a workflow
        # of another service's app, with failed runs, is retried: the runs hold their steps)
        raise unknown_workflow(args, args.workflow)
    if args.failed or len(args.run_ids) > 1:
        return _retry_many(args)
    run = runs.retry(args.run_ids[0]).to_dict()
    emit(args, run, lambda r: f"Retrying run {r['id']} ({r['workflow']}) from its failed step: "
                              f"it is {r['state']}. Follow it: flowkit follow {r['id']}")
    return 0


def _retry_many(args: argparse.Namespace) -> int:
    """Retry each run named, or each failed run chosen (an incident's: a provider was down
    and a hundred runs failed at its step); one refused does not stop the others. Exit 1
    when any was refused."""
    chosen = args.run_ids or _failed_runs(args.workflow, args.step, args.limit)
    retried, refused = _each(runs.retry, chosen)
    done = {"retried": retried, "refused": refused}
    emit(args, done, _retried)
    return 1 if done["refused"] else 0


def _each(act: Callable[[str], Any], run_ids: list[str]) -> tuple[list[str], dict[str, str]]:
    """``act`` on each run (a run named twice, once): the ids it did, and why it refused
    the others. A store or server out of reach stops them all, said once (as one run's)."""
    did: list[str] = []
    refused: dict[str, str] = {}
    for run_id in dict.fromkeys(run_ids):
        try:
            act(run_id)
            did.append(run_id)
        except StoreUnavailable:
            raise
        except FlowkitError as exc:
            refused[run_id] = str(exc)
    return did, refused


def _failed_runs(workflow: str | None, step: str | None, limit: int) -> list[str]:
    """The ids of the newest failed runs (of ``workflow``, failed at ``step``: its key,
    ``1:call_provider``, or its component, ``call_provider``), up to ``limit``."""
    chosen: list[str] = []
    before = None
    while len(chosen) < limit:
        page = runs.list_runs(workflow, "failed", PAGE, before)
        chosen += [r.id for r in page if step is None or _failed_at(r.failed_step, step)]
        if len(page) < PAGE:
            break
        before = page[-1].id
    return chosen[:limit]


def _failed_at(failed_step: str | None, step: str) -> bool:
    return bool(failed_step) and (failed_step == step or failed_step.partition(":")[2] == step)


def _retried(done: dict[str, Any]) -> str:
    lines = [f"Retrying {plural(len(done['retried']), 'run')} from their failed step."
             if done["retried"] else "No run retried."]
    lines += [f"  {run_id}" for run_id in done["retried"]]
    if done["refused"]:
        lines.append(f"Not retried ({len(done['refused'])}):")
        lines += [f"  {run_id}: {why}" for run_id, why in done["refused"].items()]
    return "\n".join(lines)


def _json_arg(text: str, what: str):
    try:
        return parse_json(text)
    except ValueError as exc:
        raise UsageError(f"{what} must be JSON ({exc}), e.g. '{{\"approved\": true}}' or "
                         "'\"yes\"' (quote it for your shell).") from None


def send_input(args: argparse.Namespace) -> int:
    try:
        delivery = runs.send_input(args.run_id, args.name, _json_arg(args.value, "the value"),
                                   step=args.step)
    except ValidationError as exc:  # the wait's schema: say which fields, and exit 2
        if exc.fields == {"name": [exc.message]}:  # the name itself, not the value
            raise UsageError(exc.message) from None
        if exc.fields == {"step": [exc.message]}:  # several steps wait under the name
            raise UsageError(f"{exc.message[:-1]} with --step STEP.") from None
        fields = "; ".join(f"{name}: {' '.join(map(str, said))}"
                           for name, said in exc.fields.items())
        raise UsageError(f"{exc.message[:-1]}: {fields}. Send the value its wait asks for "
                         f"(flowkit status {args.run_id} shows it).") from None
    run = runs.get_run(args.run_id).to_dict()
    emit(args, {"outcome": delivery.outcome.value, "run": run},
         lambda d: f"Input {args.name!r} accepted: {input_outcome(d['outcome'], run)}.")
    return 0


def input_outcome(outcome: str, run: dict) -> str:
    """What an accepted input did, with the run's state as read just after (a run that
    failed meanwhile, its workflow gone on a reload, "resumed (run ... is failed)")."""
    said = {"resumed": "the run resumed", "delivered": "the run still waits for something else",
            "same": "the same value was already accepted; nothing changed"}.get(outcome, outcome)
    if run["state"] in ("failed", "cancelled"):
        return f"{said}, and it is {run['state']} now (flowkit status {run['id']} says why)"
    return f"{said} (run {run['id']} is {run['state']})"


def send_event(args: argparse.Namespace) -> int:
    data = _json_arg(args.data, "the data") if args.data is not None else None
    try:
        woken = runs.send_event(args.key, data)
    except ValidationError as exc:  # the key's rule: a usage error, exit 2
        raise UsageError(exc.message) from None
    emit(args, {"woken": woken},
         lambda d: f"Event {args.key!r} sent: it woke {plural(d['woken'], 'waiting run')}.")
    return 0


def register(subs) -> None:
    p = subs.add_parser("status", help="show a run: state, times, steps, error or output")
    p.add_argument("run_id", metavar="RUN_ID", type=canonical_run_id)
    add_json_option(p)
    p.set_defaults(func=status)

    p = subs.add_parser("events", help="print a run's events, one line each "
                                       "(--json: JSON lines)")
    p.add_argument("run_id", metavar="RUN_ID", type=canonical_run_id)
    p.add_argument("--after", default=ev.START, type=event_cursor, metavar="EVENT_ID",
                   help="print only the events after this event id")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the run ends")
    add_json_option(p)
    p.set_defaults(func=events)

    p = subs.add_parser("cancel", help="cancel queued, running or waiting runs")
    p.add_argument("run_ids", metavar="RUN_ID", nargs="+", type=canonical_run_id)
    add_json_option(p)
    p.set_defaults(func=cancel)

    p = subs.add_parser("retry", help="resume failed runs from their failed step (ids, or "
                                      "--failed: every failed run, of -w, at --step)")
    p.add_argument("run_ids", metavar="RUN_ID", nargs="*", type=canonical_run_id)
    p.add_argument("--failed", action="store_true",
                   help="every failed run, newest first (up to -n)")
    p.add_argument("-w", "--workflow", metavar="NAME", help="with --failed: of this workflow")
    p.add_argument("--step", metavar="STEP", help="with --failed: failed at this step (its key, "
                                                  "1:call_provider, or its component's name)")
    p.add_argument("-n", "--limit", type=whole_number(1, None, "{text} is not a number of runs: "
                                                               "pass 1 or more"),
                   default=100, metavar="N", help="with --failed: at most this many (default 100)")
    add_app_option(p)
    add_json_option(p)
    p.set_defaults(func=retry)

    p = subs.add_parser("input", help="answer a run waiting in wait_for_input(NAME)")
    p.add_argument("run_id", metavar="RUN_ID", type=canonical_run_id)
    p.add_argument("name", metavar="NAME")
    p.add_argument("value", metavar="VALUE", help="the value, as JSON")
    p.add_argument("--step", metavar="STEP", help="the step whose wait it answers (its key, "
                   "1[0]:review, as `flowkit status` lists it): needed when several steps "
                   "wait under NAME at once (fan-out items, parallel branches)")
    add_json_option(p)
    p.set_defaults(func=send_input)

    p = subs.add_parser("event", help="send an event: runs waiting in wait_for_event(KEY) wake")
    p.add_argument("key", metavar="KEY")
    p.add_argument("data", nargs="?", default=None, metavar="DATA",
                   help="its data, as JSON (default: null)")
    add_json_option(p)
    p.set_defaults(func=send_event)
