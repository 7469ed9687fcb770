"""``flowkit runs``: the runs, newest first, as a table, filtered by workflow and state.

Pages go back in time with ``--before RUN_ID`` (the last id of a page), as the REST
listing's cursor does. ``--json`` prints the run records.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
from typing import Any

from ..engine import control
from ..errors import ValidationError
from ..states import RunState
from .output import add_json_option, emit, human_duration, human_time
from .render import plural, short, show, table
from .usage import UsageError, quoted, whole_number

#: Most runs one page lists (the store reads them in one pass).
MAX_LIMIT = 1000

#: How many of the newest runs name the workflows a ``-w`` typo is compared with.
NAMESAKES_FROM = 200


_limit = whole_number(1, MAX_LIMIT, f"{{text}}: a number of runs from 1 to {MAX_LIMIT}")


def _took(run: dict[str, Any], now: float) -> str:
    start = run.get("started_at")
    if not start:
        return "-"
    took = human_duration((run.get("finished_at") or now) - start)
    return took if run.get("finished_at") else f"{took} so far"


def _detail(run: dict[str, Any]) -> str:
    """The one thing to know about a run in its row: why it failed, what holds it back."""
    if run.get("error"):
        error = run["error"]
        step = f"{error.get('step')}: " if error.get("step") else ""
        return short(f"{step}{error.get('type', 'Error')}: {error.get('message', '')}", 70)
    if run.get("held_for"):
        return short(run["held_for"], 70)
    if run["state"] == RunState.SCHEDULED and run.get("start_at"):
        return f"starts {human_time(run['start_at'])}"
    if run.get("restarts"):
        return plural(run["restarts"], "restart")
    return ""


def runs_table(found: list[dict[str, Any]], limit: int) -> Any:
    now = time.time()
    rows = [(r["id"], f"{r['workflow']} v{r['version']}", r["state"], human_time(r["created_at"], now),
             _took(r, now), _detail(r)) for r in found]
    grid = table(("RUN", "WORKFLOW", "STATE", "CREATED", "TOOK", "DETAIL"), rows)
    if len(found) == limit:
        grid.caption = f"Older runs: flowkit runs --before {found[-1]['id']}"
        grid.caption_justify = "left"
    return grid


def list_runs(args: argparse.Namespace) -> int:
    try:
        listed = control.list_runs(args.workflow, args.state, args.limit, args.before)
    except ValidationError:  # the API's words name its `next`; here it is a run id
        raise UsageError(f"--before {quoted(args.before)} is not a run id: pass the last RUN of the "
                         "page before (flowkit runs prints the command).") from None
    found = [run.to_dict() for run in listed]
    if args.json:
        emit(args, found)
    elif not found:
        workflow = args.workflow if len(args.workflow or "") <= 100 else quoted(args.workflow)
        which = " ".join(f"{k} {v}" for k, v in (("of workflow", workflow),
                                                 ("in state", args.state)) if v)
        print(f"No runs{' ' + which if which else ''}"
              f"{' before ' + args.before if args.before else ''}.")
        if args.workflow:
            _say_namesakes(args.workflow)
    else:
        show(runs_table(found, args.limit))
    return 0


def _say_namesakes(workflow: str) -> None:
    """A typo (``-w sumarize``) listed no runs, as a workflow that never ran does: name the
    close ones among the newest runs' workflows, on stderr. ``runs`` reads the store and
    imports no app, so the runs are what it knows of workflows (a removed one's stay)."""
    names = {run.workflow for run in control.list_runs(None, None, NAMESAKES_FROM)}
    close = difflib.get_close_matches(workflow, sorted(names), n=3)
    if close and workflow not in names:
        print(f"flowkit: did you mean {' or '.join(close)}? (flowkit runs -w {close[0]})",
              file=sys.stderr)


def register(subs) -> None:
    p = subs.add_parser("runs", help="list runs, newest first (filters: --workflow, --state)",
                        description="List runs, newest first.")
    p.add_argument("-w", "--workflow", metavar="NAME", help="only runs of this workflow")
    p.add_argument("-s", "--state", choices=[s.value for s in RunState], metavar="STATE",
                   help="only runs in this state: " + ", ".join(s.value for s in RunState))
    p.add_argument("-n", "--limit", type=_limit, default=20, metavar="N",
                   help=f"how many runs (1-{MAX_LIMIT}, default 20)")
    p.add_argument("--before", metavar="RUN_ID", help="only runs older than this one (the next page)")
    add_json_option(p)
    p.set_defaults(func=list_runs)
