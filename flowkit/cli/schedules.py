"""``flowkit schedules list|get|create|delete|pause|resume``: schedules, straight in Redis.

The same schedules as ``flowkit.schedules`` and REST ``/schedules``: beat fires them. Only
``create`` imports your app (``-A``), to find the workflow and check the input against its
schema. The REST API's checks and messages are mirrored, so both doors take the same
schedules; bad input is one line on stderr and exit code 2, an unknown id exit code 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from ..engine import schedules
from ..errors import ConfigError, ValidationError, WorkflowNotFound
from ..flow import CRON_LINE, MAX_EVERY, OVERLAPS, SCHEDULE_ID, SCHEDULE_ID_RULE
from .app import add_app_option, load_app, unknown_workflow
from .output import emit, human_time
from .usage import UsageError, fields_line, input_text, parse_json

#: What REST accepts (flowkit.api.schemas.ScheduleBody), checked the same way here.
_CRON = re.compile(CRON_LINE)
_ID = re.compile(SCHEDULE_ID)



# -- output -------------------------------------------------------------------------------


def _clock(schedule: dict[str, Any]) -> str:
    return schedule["cron"] if schedule.get("cron") else f"every {float(schedule['every']):g}s"


def _table(items: list[dict[str, Any]]) -> str:
    # local times with how far off, as every other command prints them (it printed UTC
    # ISO strings: "9 o'clock Paris" read 08:00, and no "in 14h"); the overlap policy, so
    # that a skip schedule is told from an allow one
    rows = [("ID", "WORKFLOW", "CRON/EVERY", "TIMEZONE", "OVERLAP", "NEXT RUN", "PAUSED")]
    rows += [(s["id"], s["workflow"], _clock(s), s.get("timezone") or "UTC",
              s.get("overlap") or "allow", human_time(s["next_at"]),
              "yes" if s["paused"] else "no") for s in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _show(items: list[dict[str, Any]] | dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(items, indent=2, default=str))
        return
    items = items if isinstance(items, list) else [items]
    print(_table(items) if items else "No schedules (create one: flowkit schedules create).")
    for s in items:  # a tick that started no run said so only in a worker's log
        if s.get("last_error"):
            print(f"Schedule {s['id']}: its tick of {human_time(s['last_error']['tick'])} started no "
                  f"run: {s['last_error']['error']}")


# -- commands -----------------------------------------------------------------------------


def list_schedules(args: argparse.Namespace) -> int:
    _show(sorted(schedules.list(), key=lambda s: s["id"]), args.json)
    return 0


def get_schedule(args: argparse.Namespace) -> int:
    _show(schedules.get(args.id), args.json)
    return 0


def create(args: argparse.Namespace) -> int:
    spec = _spec(args)
    load_app(args)
    try:
        created = schedules.create(args.workflow, **spec)
    except WorkflowNotFound:
        raise unknown_workflow(args, args.workflow) from None
    except ValidationError as exc:  # said as flowkit run says it, not as raw JSON
        raise UsageError(f"the input does not fit the schema of workflow '{args.workflow}' "
                         f"({fields_line(exc.fields)}); pass --input with the JSON object "
                         "each run starts with (--input '{...}' or --input @input.json).") from None
    except ConfigError as exc:  # a cron line or time zone the scheduler cannot read
        raise UsageError(str(exc)) from None
    _show(created, args.json)
    return 0


def delete(args: argparse.Namespace) -> int:
    schedules.delete(args.id)
    emit(args, {"deleted": args.id}, lambda d: f"Deleted schedule {d['deleted']!r}.")
    return 0


def pause(args: argparse.Namespace) -> int:
    _show(schedules.pause(args.id), args.json)
    return 0


def resume(args: argparse.Namespace) -> int:
    _show(schedules.resume(args.id), args.json)
    return 0


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``schedules.create``, checked as REST checks them."""
    if (args.cron is None) == (args.every is None):
        raise UsageError("Give --cron or --every, one of them: e.g. --cron '0 9 * * 1-5' or "
                         "--every 3600.")
    spec: dict[str, Any] = {"timezone": args.timezone, "catchup": args.catchup,
                            "overlap": args.overlap}
    if args.cron is not None:
        cron = " ".join(args.cron.split())
        if not _CRON.fullmatch(cron):
            raise UsageError(f"--cron {args.cron!r}: 5 fields (minute hour day month weekday) "
                             "of digits and * / , -, e.g. '0 9 * * 1-5' (quote it for your "
                             "shell).")
        spec["cron"] = cron
    else:
        try:
            every = float(args.every)
        except ValueError:
            every = float("nan")
        if not 1 <= every <= MAX_EVERY:
            raise UsageError(f"--every {args.every!r}: a number of seconds from 1 to "
                             f"{MAX_EVERY}, e.g. --every 3600.")
        spec["every"] = every
    if args.input is not None:
        try:
            spec["input"] = parse_json(input_text(args.input))
        except ValueError as exc:
            raise UsageError(f"--input must be JSON ({exc}), e.g. '{{\"n\": 1}}' (quote it "
                             "for your shell), or @file.json.") from None
    if not 1 <= len(args.timezone) <= 64:
        raise UsageError("--timezone takes an IANA name like 'Europe/Paris' or 'UTC'.")
    if args.id is not None:
        if not _ID.fullmatch(args.id):
            said = repr(args.id) if len(args.id) <= 200 else f"of {len(args.id)} characters"
            raise UsageError(f"--id {said}: {SCHEDULE_ID_RULE}.")
        spec["id"] = args.id
    return spec


# -- the parser ---------------------------------------------------------------------------


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _sub(subs, name: str, func, text: str) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    p.set_defaults(func=func, where=f"schedules {name}")
    return p


def register(subs) -> None:
    group = subs.add_parser(
        "schedules", help="list, get, create, delete, pause, resume schedules",
        description="Schedules start a run of a workflow at every tick of a cron line or an "
                    "interval; beat fires them.")

    def usage(_: argparse.Namespace) -> int:
        group.print_help(sys.stderr)
        return 2

    group.set_defaults(func=usage)
    commands = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")

    p = _sub(commands, "list", list_schedules, "list the schedules")
    _json_flag(p)

    p = _sub(commands, "get", get_schedule, "print one schedule")
    p.add_argument("id", metavar="ID")
    _json_flag(p)

    p = _sub(commands, "create", create, "create (or replace) a schedule of a workflow")
    p.add_argument("workflow", metavar="WORKFLOW", help="the workflow's name")
    p.add_argument("--cron", metavar="LINE",
                   help="5 fields: minute hour day month weekday, e.g. '0 9 * * 1-5'")
    p.add_argument("--every", metavar="SECONDS", help="an interval in seconds, e.g. 3600")
    p.add_argument("--input", metavar="JSON", default=None,
                   help="the input of every run, as JSON or @file.json (default: null)")
    p.add_argument("--timezone", metavar="ZONE", default="UTC",
                   help="the IANA time zone of the cron line, e.g. Europe/Paris (default: UTC)")
    p.add_argument("--catchup", action="store_true",
                   help="run the last tick missed while beat was down (default: skip them)")
    p.add_argument("--overlap", choices=OVERLAPS, default="allow",
                   help="a tick while the last run is live: allow (start it all the same, "
                        "the default), skip (start none), buffer (start it once the last "
                        "ends; one held back) or cancel (cancel the last)")
    p.add_argument("--id", metavar="ID", default=None,
                   help="the schedule's id (default: WORKFLOW@CRON or WORKFLOW@everyNs); "
                        "an existing id is replaced")
    add_app_option(p)
    _json_flag(p)

    for name, func, text in (("delete", delete, "delete a schedule"),
                             ("pause", pause, "pause a schedule: no run starts until resumed"),
                             ("resume", resume, "resume a paused schedule from its next tick")):
        p = _sub(commands, name, func, text)
        p.add_argument("id", metavar="ID")
        _json_flag(p)
