"""``flowkit run`` and ``flowkit follow``: start a run and watch it live in the terminal.

``flowkit run WORKFLOW -i key=value ...`` validates the input against the workflow's
schema, starts the run and follows it (``--detach`` only starts it); ``flowkit follow
RUN_ID`` follows one that exists. Both end with the run's output or its error and exit
0 only when it succeeded (1 failed or cancelled), so scripts can chain them; Ctrl-C
detaches (the run goes on) and says how to follow again.

They talk to Redis directly (with ``-A`` naming the module that imports the workflows,
as for ``celery -A``) or, with ``--url``, to a deployment's REST API with an API key
(``--api-key``/``FLOWKIT_API_KEY``; a run token is enough to follow its own run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Iterator
from typing import Any, Protocol

from rich.console import Console
from rich.live import Live

from .. import events as ev
from ..engine.control import canonical_run_id
from ..errors import (
    FlowkitError,
    PayloadTooLarge,
    RunNotFound,
    StoreUnavailable,
    ValidationError,
    WorkflowNotFound,
)
from ..urls import redacted_query
from .app import add_app_option, load_app, unknown_workflow
from .following import StallWatch, followed_locally
from .live import Printer, RunView, final_lines
from .output import add_json_option
from .remote import RemoteRuns
from .runs import event_cursor
from .usage import UsageError, field_texts, fields_line, input_text, parse_json, utf8_text

#: Exit codes: the run succeeded, failed or was cancelled, detached by Ctrl-C.
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_DETACHED = 0, 1, 130


class Runs(Protocol):
    """Where runs are: Redis directly (``LocalRuns``) or a REST API (``RemoteRuns``)."""

    def start(self, workflow: str, input: Any) -> dict[str, Any]: ...
    def get(self, run_id: str) -> dict[str, Any]: ...
    def events(self, run_id: str, after: str) -> Iterator[dict[str, Any]]: ...


class LocalRuns:
    """Runs in the Redis of FLOWKIT_REDIS_URL, started with the workflows ``-A`` imports."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args

    def start(self, workflow: str, input: Any) -> dict[str, Any]:
        load_app(self.args)
        from ..workflow import get_workflow

        try:
            found = get_workflow(workflow)
        except WorkflowNotFound:
            raise unknown_workflow(self.args, workflow) from None
        return found.start(input).to_dict()

    def get(self, run_id: str) -> dict[str, Any]:
        from ..engine import control

        return control.get_run(run_id).to_dict()

    def events(self, run_id: str, after: str) -> Iterator[dict[str, Any]]:
        return followed_locally(run_id, after)


def runs_of(args: argparse.Namespace) -> Runs:
    if args.url == "":  # taken for no --url: the command ran on Redis, and said nothing of it
        raise UsageError("--url is empty: give the address of your app's flowkit API, e.g. "
                         "--url http://127.0.0.1:8000, or leave --url out to use Redis.")
    url = args.url or os.environ.get("FLOWKIT_URL")
    if not url:
        given = "--token" if getattr(args, "token", None) else (
            "--api-key" if getattr(args, "api_key", None) else None)
        if given:  # dropped without a word: the command read Redis, and said only that
            raise UsageError(f"{given} goes with --url (or FLOWKIT_URL): give the address of "
                             "your app's flowkit API, e.g. --url http://127.0.0.1:8000/flowkit, "
                             f"or leave {given} out to use Redis.")
        return LocalRuns(args)
    # what the command line says wins over the environment's key
    credential = args.api_key or args.token or os.environ.get("FLOWKIT_API_KEY")
    return RemoteRuns(url, credential, run_token=bool(args.token and not args.api_key))


def parse_input(args: argparse.Namespace) -> Any:
    """``--input`` (JSON, or ``@file.json``) overlaid with ``-i key=value`` fields.

    ``key=value`` is typed as ``gh api -F`` types it: ``true``, ``false``, ``null`` and
    numbers become JSON values, anything else a string; ``key:=json`` takes any JSON
    value (``tags:='["a"]'``, ``zip:='"01234"'`` for a string of digits)."""
    data: Any = {}
    if args.input is not None:
        text = input_text(args.input)
        try:
            data = parse_json(text)
        except ValueError as exc:
            raise UsageError(f"--input is not JSON ({exc}); pass a JSON object such as "
                             "'{\"topic\": \"x\"}', or @file.json.") from None
    for item in args.items:
        if not isinstance(data, dict):
            raise UsageError("-i sets fields of a JSON object, but --input is not an object.")
        key, value = _item(item)
        data[key] = value
    return data


_SCALAR = re.compile(r"true|false|null|-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")


def _item(item: str) -> tuple[str, Any]:
    try:  # a key or string as it came, in bytes of the command line that may not be UTF-8
        utf8_text(item, item)  # (an escape after := is JSON's: parse_json says so)
    except ValueError as exc:
        shown = item.encode("utf-8", "backslashreplace").decode()
        raise UsageError(f"-i {shown}: {exc}.") from None
    eq = item.find("=")
    if eq <= 0:
        raise UsageError(f"-i {item}: write key=value, or key:=json for any JSON value.")
    if item[eq - 1] == ":" and eq > 1:
        key, text = item[:eq - 1], item[eq + 1:]
        try:
            return key, parse_json(text)
        except ValueError as exc:
            raise UsageError(f"-i {item}: the value after := must be JSON ({exc}), e.g. "
                             f"{key}:=3 or {key}:='[1, 2]'.") from None
    key, text = item[:eq], item[eq + 1:]
    if not _SCALAR.fullmatch(text):
        return key, text
    try:  # as the API reads it: 1e400 is no Infinity, 5,000 digits no traceback
        return key, parse_json(text)
    except ValueError as exc:
        raise UsageError(f"-i {key}={text[:20]}{'...' if len(text) > 20 else ''}: {exc} "
                         f"({key}:='\"...\"').") from None


def run(args: argparse.Namespace) -> int:
    runs = runs_of(args)
    try:
        record = runs.start(args.workflow, parse_input(args))
    except ValidationError as exc:
        raise UsageError(_invalid(args.workflow, exc, args.items)) from None
    except PayloadTooLarge as exc:  # an input to make smaller: a mistake on the command line
        raise UsageError(str(exc)) from None
    if args.detach:
        if args.json:
            print(json.dumps(record, indent=2, default=str))
        else:  # the id alone on stdout, for RUN=$(flowkit run ... --detach); said on
            # stderr first, so that a stdout that fails (a full disk) loses no run id
            print(f"run {record['id']} {record['state']} ({args.workflow}); follow it: "
                  f"{_follow_hint(args, record['id'])}", file=sys.stderr, flush=True)
            print(record["id"])
        return EXIT_SUCCEEDED
    try:
        return follow_run(args, runs, record["id"], ev.START, started=True)
    except (StoreUnavailable, RunNotFound):
        raise  # Redis to start (the run is stored), a run gone: their messages say so
    except FlowkitError as exc:
        raise _started_but(args, record["id"], exc) from None


def _started_but(args: argparse.Namespace, run_id: str, exc: FlowkitError) -> FlowkitError:
    """An error once the start was acknowledged, said with the run it started: alone, its
    message ("send the request again", "cannot reach ...") led to a second run, and the
    first one's id was never shown."""
    kind = UsageError if isinstance(exc, UsageError) else FlowkitError
    return kind(f"run {run_id} ({args.workflow}) was started and goes on; following it "
                f"failed: {exc} Do not start it again: follow it with "
                f"{_follow_hint(args, run_id)}")


def follow(args: argparse.Namespace) -> int:
    return follow_run(args, runs_of(args), args.run_id, args.after)


def follow_run(args: argparse.Namespace, runs: Runs, run_id: str, after: str,
               started: bool = False) -> int:
    """Show the run's events until it ends; the exit code says how it ended. ``started``:
    the run was just started, so it exists and the server answers; its stream waits out a
    server restarting (a first read of the run failed at once on a 503)."""
    console = Console(highlight=False, emoji=False)
    if not console.is_terminal:  # each line whole: what reads the pipe parses lines (the
        console = Console(highlight=False, emoji=False, soft_wrap=True)  # `flowkit input ...` to answer)
    # over --url, the hints are the API's calls: flowkit input/retry need the Redis
    api = runs.shown if isinstance(runs, RemoteRuns) else None
    credential = runs.credential if isinstance(runs, RemoteRuns) else None
    view = RunView(run_id, api=api, credential=credential)
    if not started:  # an unknown run, a server that is down: one line, before any wait
        runs.get(run_id)
    try:
        followed = runs.events(run_id, after)
    except ValidationError as exc:  # --after past the run's last event: before any output
        raise UsageError(exc.message) from None
    try:
        if args.json:
            for event in followed:
                print(json.dumps(event, default=str), flush=True)
        elif console.is_terminal:
            signal.signal(signal.SIGTERM, _terminated)  # the cursor back, as after Ctrl-C
            try:
                with Live(view, console=console, refresh_per_second=8) as live, \
                        StallWatch(lambda: runs.get(run_id), view.stalled) as stalls:
                    for event in followed:
                        stalls.seen()
                        view.feed(event)
                        live.refresh()  # at once, not at the next tick
            finally:  # also when a signal cut the view's own start short (no exit then)
                console.show_cursor(True)
        else:
            printer = Printer(console)
            console.print(f"following run {run_id}", markup=False)
            with StallWatch(lambda: runs.get(run_id), printer.stalled) as stalls:
                for event in followed:
                    stalls.seen()
                    printer.show(event, view.feed(event))
    except KeyboardInterrupt:
        print(f"\ndetached; run {run_id} goes on. Follow it again: "
              f"{_follow_hint(args, run_id)}", file=sys.stderr)
        return EXIT_DETACHED
    record = runs.get(run_id)
    if not args.json:
        for line in final_lines(record, getattr(args, "app", None), api, credential):
            console.print(line, markup=False)
    return EXIT_SUCCEEDED if record.get("state") == "succeeded" else EXIT_FAILED


def _terminated(signum: int, frame: Any) -> None:
    """SIGTERM while the live view holds the terminal: leave through the ``finally`` that
    shows the cursor the view hid (the default action left the shell without one)."""
    raise SystemExit(128 + signum)


def _follow_hint(args: argparse.Namespace, run_id: str) -> str:
    # redacted: the line is printed, and a password in it stayed in the scrollback
    where = f" --url {redacted_query(args.url)}" if args.url else ""
    return f"flowkit follow {run_id}{where}"


def _invalid(workflow: str, exc: ValidationError, items: list[str]) -> str:
    said = field_texts(exc.fields)
    fields = fields_line(exc.fields)
    hints = [f" (-i {item} typed it as {_json_type(value)}: write {key}:='\"{text}\"' for the "
             "string)" for item in items
             for key, text, value in [_typed(item)]
             if key in said and not isinstance(value, str)
             and ("string" in said[key] or (value is None and "null" in said[key]))]
    return (f"the input does not fit the schema of workflow '{workflow}' ({fields}){''.join(hints)}; "
            "set fields with -i key=value or --input JSON.")


def _typed(item: str) -> tuple[str, str, Any]:
    """An ``-i key=value`` item's key, text and the value it was given (a ``key:=json``
    item counts as a string: its author typed it on purpose)."""
    eq = item.find("=")
    if eq <= 0 or item[eq - 1] == ":":
        return "", "", ""
    key, value = _item(item)
    return key, item[eq + 1:], value


def _json_type(value: Any) -> str:
    return "null" if value is None else "a boolean" if isinstance(value, bool) else "a number"


def _remote_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="a deployment's API (where flowkit is mounted) instead of Redis "
                        "(default: $FLOWKIT_URL)")
    p.add_argument("--api-key", default=None, help="API key for --url (default: $FLOWKIT_API_KEY)")
    add_json_option(p)


def register(subs) -> None:
    p = subs.add_parser("run", help="start a run and follow it live until it ends")
    p.add_argument("workflow", metavar="WORKFLOW")
    p.add_argument("-i", dest="items", action="append", default=[], metavar="KEY=VALUE",
                   help="an input field: key=value (true, false, null and numbers as JSON, "
                        "anything else a string) or key:=json (any JSON); repeat")
    p.add_argument("--input", default=None, metavar="JSON|@FILE",
                   help="the whole input as JSON, or @file.json (-i fields override it)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--follow", dest="detach", action="store_false",
                      help="follow the run until it ends (the default)")
    mode.add_argument("--detach", action="store_true",
                      help="start it and print its id alone (the follow line goes to stderr)")
    add_app_option(p)
    _remote_options(p)
    p.set_defaults(func=run, token=None, detach=False)

    p = subs.add_parser("follow", help="follow a run live until it ends")
    p.add_argument("run_id", metavar="RUN_ID", type=canonical_run_id)
    p.add_argument("--after", default=ev.START, type=event_cursor, metavar="EVENT_ID",
                   help="event id to resume after")
    p.add_argument("--token", default=None, help="a run token for --url (reads that run only)")
    _remote_options(p)
    p.set_defaults(func=follow)
