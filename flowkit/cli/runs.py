"""``flowkit status|events|cancel|retry|input|event``: inspect, control and answer runs."""

from __future__ import annotations

import argparse
import json

from .. import events as ev
from ..engine import control as runs
from .app import add_app_option, load_app
from .usage import UsageError


def _print(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def status(args: argparse.Namespace) -> int:
    _print(runs.get_run(args.run_id).to_dict())
    return 0


def events(args: argparse.Namespace) -> int:
    runs.get_run(args.run_id)  # an unknown run says so instead of waiting forever
    stream = runs.follow(args.run_id, args.after) if args.follow else runs.history(args.run_id, args.after)
    for event in stream:
        print(json.dumps(event.to_dict(), default=str), flush=True)
    return 0


def cancel(args: argparse.Namespace) -> int:
    _print(runs.cancel(args.run_id).to_dict())
    return 0


def retry(args: argparse.Namespace) -> int:
    load_app(args)
    _print(runs.retry(args.run_id).to_dict())
    return 0


def _json_arg(text: str, what: str):
    try:
        return json.loads(text)
    except ValueError:
        raise UsageError(f"{what} must be JSON, e.g. '{{\"approved\": true}}' or '\"yes\"' "
                           "(quote it for your shell).") from None


def send_input(args: argparse.Namespace) -> int:
    delivery = runs.send_input(args.run_id, args.name, _json_arg(args.value, "the value"))
    _print({"outcome": delivery.outcome.value, "run": runs.get_run(args.run_id).to_dict()})
    return 0


def send_event(args: argparse.Namespace) -> int:
    data = _json_arg(args.data, "the data") if args.data is not None else None
    _print({"woken": runs.send_event(args.key, data)})
    return 0


def register(subs) -> None:
    p = subs.add_parser("status", help="print a run's record as JSON")
    p.add_argument("run_id")
    p.set_defaults(func=status)

    p = subs.add_parser("events", help="print a run's events as JSON lines")
    p.add_argument("run_id")
    p.add_argument("--after", default=ev.START, help="event id to resume after")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until the run ends")
    p.set_defaults(func=events)

    p = subs.add_parser("cancel", help="cancel a queued or running run")
    p.add_argument("run_id")
    p.set_defaults(func=cancel)

    p = subs.add_parser("retry", help="resume a failed run from its failed step")
    p.add_argument("run_id")
    add_app_option(p)
    p.set_defaults(func=retry)

    p = subs.add_parser("input", help="answer a run waiting in wait_for_input(NAME)")
    p.add_argument("run_id")
    p.add_argument("name")
    p.add_argument("value", help="the value, as JSON")
    p.set_defaults(func=send_input)

    p = subs.add_parser("event", help="send an event: runs waiting in wait_for_event(KEY) wake")
    p.add_argument("key")
    p.add_argument("data", nargs="?", default=None, help="its data, as JSON (default: null)")
    p.set_defaults(func=send_event)
